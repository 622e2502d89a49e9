"""Training on DeepSpeed: one loop for sft, rs, rm and dpo, and each trainer with its torch-free
config beside it (the TRL pattern), so the controller plans a run without importing torch.

    sft.py, sft_config.py    stages sft and rs: assistant-token cross-entropy
    rm.py, rm_config.py      stage rm: Bradley-Terry on (chosen, rejected), held-out accuracy
    dpo.py, dpo_config.py    stage dpo: DPO, IPO, RSO hinge, robust DPO (reference log-probs), SimPO
                             (reference-free), each with an optional RPO NLL term
    config.py                TrainConfig: the settings every training stage shares (lora:, attention);
                             PairTrainConfig: rm's and dpo's (padding_free)
    lora.py                  LoRA / QLoRA through peft: wrapping, the adapters-off reference, merged export
    loop.py                  the one training loop (train), evaluation, the per-example gather
    losses.py                the objectives as pure functions of tensors
    harness.py               around the loop: process group, inputs, the one trainer tail (model card)
    tracking.py              where metrics go: metrics.jsonl, TensorBoard, MLflow, W&B
    launch.py                where a process sits in the job (ProcessPlace), starting workers
    deepspeed_setup.py       the DeepSpeed engine, optimizer, schedule, ZeRO-3 sharded loading
    checkpoint.py            checkpoints in the artifact store, resume, gathered weights
    data.py, pairs.py        batch schedules (grouped, packed) and preference-pair batches (padded
                             or padding-free)

Each trainer module's `run(config, ctx)` is the stage's entry point (xwin.stages.registry).
"""
