"""Data: record schemas, files, importers, chat templating and the selection rules.

    schemas.py     Conversation, Prompt, PreferencePair, MultiwiseRecord (OpenAI-style messages)
    io.py          JSONL records validated on the way in; errors name file, line and field
    sharegpt.py    ShareGPT conversations (the packaged dataset), prompts, held-out splits
    mtbench.py     MT-bench questions, reference answers and judge prompts (packaged)
    templating.py  the tokenizer's own chat template, assistant-only and reply masks
    dataset.py     tokenized SFT samples, collators, length-grouped batches
    selection.py   best-of-N, chosen/rejected pair rules, the best-of-N curve (pure functions)
"""
