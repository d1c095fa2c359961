#!/usr/bin/env python3
"""Checks that what agentcore writes loads in the Python ecosystem and computes the same thing.

Reads the directory written by the ignored test `interop_export_for_transformers_and_peft`:
  base/      a tiny Llama as a Hugging Face directory (our `save_hf_dir`)
  adapter/   a trained LoRA adapter in the PEFT layout (our `save_lora_adapter`)
  merged/    the same model with the adapter merged in (our `save_hf_dir` of the LoRA model)
  expected.json  our logits for fixed input ids
Loads base + adapter with transformers' AutoModelForCausalLM and peft's PeftModel, and merged
alone, and compares their logits with ours. Prints one JSON line; exits 1 on a mismatch.

  AGENTCORE_INTEROP_DIR=/tmp/interop cargo test -p agentcore-model --test it -- --ignored interop
  python scripts/check_peft_interop.py /tmp/interop     # needs torch, transformers, peft
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    root = sys.argv[1]
    expected = json.load(open(f"{root}/expected.json"))
    ids = torch.tensor([expected["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(f"{root}/base", dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, f"{root}/adapter")
    merged = AutoModelForCausalLM.from_pretrained(f"{root}/merged", dtype=torch.float32)
    with torch.no_grad():
        peft_logits = with_adapter(ids).logits[0]
        merged_logits = merged(ids).logits[0]
    ours = torch.tensor(expected["logits"]).reshape(peft_logits.shape)
    result = {
        "max_abs_diff_peft": (peft_logits - ours).abs().max().item(),
        "max_abs_diff_merged": (merged_logits - ours).abs().max().item(),
        "max_abs_logit": ours.abs().max().item(),
    }
    print(json.dumps(result))
    ok = result["max_abs_diff_peft"] < 1e-4 and result["max_abs_diff_merged"] < 1e-4
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
