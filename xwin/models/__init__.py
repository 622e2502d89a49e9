"""Models: loading bases, the reward model, and writing what every tool loads unchanged.

    card.py        the Hub's conventions: README.md model card, generation config, chat template
    device.py      the device policy: cuda:<local rank> when CUDA is present, else the CPU
    loading.py     HF folders and GGUF files in (GGUF de-quantized), HF safetensors folders out
    reward.py      RewardModel: an LM body with a scalar value head, saved as a standard
                   AutoModelForSequenceClassification folder; loading both formats
    scoring.py     scoring token sequences with a reward model in length-sorted batches capped
                   by tokens; the RewardScorer interface
    hf_scoring.py  the HF scorer: the reward model in this process
    vllm_scoring.py  the vLLM scorer: vLLM's pooling runner (tensor parallel), vLLM imported here only
    scorer_factory.py  open_reward_scorer: backend hf, vllm or auto (vLLM where it runs the folder)
    tiny.py        a tiny random Llama with a real tokenizer, for fast tests and dry runs
"""
