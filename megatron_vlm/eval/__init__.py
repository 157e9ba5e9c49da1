"""Long-document VQA evaluation: scoring, fixed-length contexts, needle test, reports, backends."""
