"""Models: loading bases, the reward model, and writing what every tool loads unchanged.

    card.py        the Hub's conventions: README.md model card, generation config, chat template
    device.py      the device policy: cuda:<local rank> when CUDA is present, else the CPU
    loading.py     HF folders and GGUF files in (GGUF de-quantized), HF safetensors folders out
    reward.py      RewardModel: an LM body with a scalar value head, saved as a standard
                   AutoModelForSequenceClassification folder; loading both formats
    scoring.py     scoring (context, reply) pairs with a reward model in length-sorted batches
    tiny.py        a tiny random Llama with a real tokenizer, for fast tests and dry runs
"""
