"""Long-document QA synthesis: segments of pool documents -> teacher -> validated QA records.

run.py is the stage (`preprocess_data.py synth`); facts.py reads checkable facts from layout
blocks; tasks.py chooses segments and builds the OCR tasks; prompts.py holds the teacher prompts
and the answer schema; teachers/ holds `template` (offline) and `openai`; validation.py decides
what is kept and counts what is rejected, by reason.
"""
