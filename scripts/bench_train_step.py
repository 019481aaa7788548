"""Seconds per fine-tuning step of a token classifier on CPU or GPU, for a few dropout settings.

    python scripts/bench_train_step.py --model models/zh-policy-char-bert --batch 16 --length 256
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForTokenClassification

from zh_policy_ner.common.modeling import use_bf16


def seconds_per_step(model_dir: str, hidden: float, attention: float, batch: int, length: int, steps: int) -> float:
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=7, hidden_dropout_prob=hidden,
                                                            attention_probs_dropout_prob=attention).train()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(5, model.config.vocab_size, (batch, length), device=device)
    labels = torch.randint(0, 7, (batch, length), device=device)
    bf16 = use_bf16("auto")

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/zh-policy-char-bert")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the MLM folder has no classifier head: a fresh one is expected
    print(f"bf16 autocast: {use_bf16('auto')}, threads: {torch.get_num_threads()}")
    print("| hidden dropout | attention dropout | s/step | tokens/s |\n|---|---|---|---|")
    for hidden, attention in [(0.1, 0.1), (0.1, 0.0), (0.0, 0.0)]:
        s = seconds_per_step(a.model, hidden, attention, a.batch, a.length, a.steps)
        print(f"| {hidden} | {attention} | {s:.3f} | {a.batch * a.length / s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
