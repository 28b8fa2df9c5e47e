"""The book QA job: books -> token-budget chunks -> graded QA pairs -> BOOK_CHUNK records.

``job`` (flags, graph, run), ``book_io``/``chunking`` (reading, encodings, chunks), ``qa_*``
(prompt, client, RunInference handler, grading gate), ``llm_server`` (the embedded model),
``http_deadline``/``redact`` (hostile endpoints), ``prompts/`` (shipped templates).
"""
