"""Long-document QA synthesis: segments of pool documents -> teacher -> validated QA records.

run.py is the stage (`preprocess_data.py synth`); facts.py reads checkable facts from a whole
document's layout blocks, each with what a question must name to ask it; tasks.py chooses
segments and builds the OCR tasks; prompts.py holds the teacher prompts and the answer schema;
teachers/ holds `template` (offline) and `openai`; validation.py decides what is kept and counts
what is rejected, by reason; records.py is the one reader and writer of QA record files;
qa_check.py (`preprocess_data.py qa-check`) runs the validation rules over any records and
review.py (`preprocess_data.py review`) writes an HTML page of sampled records with their pages.
"""
