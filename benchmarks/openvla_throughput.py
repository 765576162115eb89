"""OpenVLA throughput at the released shapes, offline: KV-cached ``act`` vs ``generate``, the LoRA update, memory;
with ``--oft``, OpenVLA-OFT's chunked parallel decoding (8 steps x 7 dims = 56 tokens per forward).

    python benchmarks/openvla_throughput.py --size 7b --device cuda --dtype bfloat16 --batch-sizes 8 32 64 --minibatches 8 16
    OMP_NUM_THREADS=2 python benchmarks/openvla_throughput.py --size vision-full --batch-sizes 1 4 --minibatches 1 4 --repeats 2
    python benchmarks/openvla_throughput.py --oft --size 7b --device cuda --dtype bfloat16 --batch-sizes 8 32 64 --minibatches 8 16
    OMP_NUM_THREADS=2 python benchmarks/openvla_throughput.py --oft --size vision-full --batch-sizes 1 4 --minibatches 1 4 --repeats 2

``--oft`` measures, per batch size B: ``act`` (the policy's parallel decoding: one bidirectional forward over
prompt + 56 zeroed slots + stop token, the LM head applied to the 56 reading positions' 256 action rows only), the
*HF forward* baseline (the same sequence through ``LlamaForCausalLM``'s own forward: full-vocabulary logits at
every position, then the argmax at the 56 -- what the original ``predict_action`` computes) and *autoregressive*
(the same 56 tokens decoded one by one with the KV cache: what a chunked policy costs without parallel decoding);
one call = a chunk of 8 env steps for each of the B envs, so env-steps/s = 8 B / time. The update is forward +
backward of ``evaluate`` over the 56 tokens.

``--size 7b`` is OpenVLA-7B: DINOv2 ViT-L/14-reg4 + SigLIP So400m/14 at 224 px, the 3-layer projector and a
Llama-2-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, 32064 rows); ``vision-full`` keeps the full-size
vision tower with a 2-layer Llama of width 1024 (what a CPU can run); ``tiny`` is the test model. The
weights are random (drawn on the device, in ``--dtype``; nothing is downloaded), the tokenizer the synthetic
Llama one, the policy this project's (LoRA r=32 on the Llama's projections, as training builds it).

Measured per batch size B (medians of ``--repeats`` after one warm-up):

* act: ``policy.act`` — one prefill with the vision tower, then 6 cached single-token steps, each over the
  256 action-token logits only; one call = B env steps.
* generate: the same model through transformers' ``generate`` (``LlamaForCausalLM.generate`` over the
  multimodal embeddings, greedy, 7 new tokens, full vocabulary): what the original ``predict_action`` does.
* update: forward + backward of a policy-gradient loss over ``policy.evaluate`` (teacher-forced, all 7 tokens)
  plus the value head, for a minibatch of M samples, with gradient checkpointing off and on.
* memory: peak CUDA memory (``max_memory_allocated``) of each measured call; on CPU the process's peak RSS.
Prints markdown tables and writes ``benchmarks/results/openvla_throughput_<size>_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIZES: dict[str, dict[str, Any]] = {
    "7b": dict(vit_ids=("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"),
               text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32), image_size=224),
    "vision-full": dict(vit_ids=("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"),
                        text=dict(hidden_size=1024, intermediate_size=2752, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=8), image_size=224),
    "tiny": dict(vit_ids=("vit_dinov2reg_w32_d3_h2_p14", "vit_siglip_w32_d3_h2_p14_m64"),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2), image_size=224),
}
RESULTS = Path(__file__).resolve().parent / "results"


def build_policy(size: str, device: torch.device, dtype: torch.dtype, grad_ckpt: bool, chunk_size: int = 1,
                 decoding: str = "autoregressive"):
    """A random-weight OpenVLA of ``size`` as this project's VLA policy (LoRA r=32), built on ``device``."""
    from vla_structppo.config import load_config
    from vla_structppo.policies.action_tokenizer import ActionTokenizer
    from vla_structppo.policies.openvla import OpenVLAConfig, OpenVLAForActionPrediction, OpenVLAProcessor
    from vla_structppo.policies.openvla.processing import OpenVLAImageProcessor
    from vla_structppo.policies.vla import VLAPolicy
    from vla_structppo.policies.vla_arch import ARCHS
    from vla_structppo.policies.vla_loading import apply_lora
    from vla_structppo.testing.tiny_openvla import DEFAULT_NORM_STATS, build_llama_tokenizer

    spec = SIZES[size]
    config = OpenVLAConfig(text_config={**spec["text"], "vocab_size": 32064, "pad_token_id": 32000},
                           timm_model_ids=list(spec["vit_ids"]), image_sizes=[spec["image_size"]] * 2,
                           norm_stats=DEFAULT_NORM_STATS, pad_token_id=32000)
    config.text_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = OpenVLAForActionPrediction(config)
    model = model.to_empty(device=device)
    with torch.no_grad():  # random weights drawn on the device (a 7B model never passes through the CPU)
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.02) if p.ndim >= 2 else p.fill_(1.0 if "norm" in name or "scale" in name else 0.0)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.language_model.model.rotary_emb = LlamaRotaryEmbedding(config=config.text_config).to(device)
    model = model.to(dtype)
    tmp = Path(tempfile.mkdtemp())
    build_llama_tokenizer(tmp)
    from transformers import LlamaTokenizerFast

    tokenizer = LlamaTokenizerFast.from_pretrained(str(tmp))
    processor = OpenVLAProcessor(OpenVLAImageProcessor((spec["image_size"],) * 2), tokenizer)
    cfg = load_config(None, ["policy.type=vla", "model.name_or_path=x", "env.observation=image", "env.num_bins=256",
                             f"model.gradient_checkpointing={str(grad_ckpt).lower()}"])
    if grad_ckpt:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    tok = ActionTokenizer.openvla(DEFAULT_NORM_STATS, "bridge_orig")
    model = apply_lora(model, ARCHS["openvla"], cfg.model, tok)
    return VLAPolicy(model, processor, tok, ARCHS["openvla"], chunk_size=chunk_size, decoding=decoding).to(device)


def observations(batch: int, image_size: int) -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
            "instruction": np.array(["pick up the black bowl and place it on the plate"] * batch)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """``(median seconds, peak memory MiB)`` of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return statistics.median(times), peak


def bench(size: str, device: torch.device, dtype: torch.dtype, batch_sizes: list[int], minibatches: list[int],
          repeats: int) -> dict:
    from vla_structppo.algo.heads import ValueHead

    rows: dict[str, list] = {"act": [], "update": []}
    policy = build_policy(size, device, dtype, grad_ckpt=False)
    image_size = SIZES[size]["image_size"]
    for B in batch_sizes:
        inputs = policy.prepare(observations(B, image_size))

        def act(inputs=inputs):
            with torch.no_grad():
                return policy.act(inputs)

        def generate(inputs=inputs):
            with torch.no_grad():
                base = policy.base_model
                embeds = base.embed(inputs["input_ids"], inputs["pixel_values"])
                return base.language_model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                                    max_new_tokens=7, min_new_tokens=7, do_sample=False,
                                                    pad_token_id=32000)

        t_act, m_act = measure(act, device, repeats)
        t_gen, m_gen = measure(generate, device, repeats)
        rows["act"].append(dict(batch=B, act_steps_per_s=B / t_act, generate_steps_per_s=B / t_gen,
                                act_over_generate=t_gen / t_act, act_peak_mib=m_act, generate_peak_mib=m_gen))
        print(f"[{size}] B={B}: act {B / t_act:.1f} env-steps/s, generate {B / t_gen:.1f} ({t_gen / t_act:.2f}x)",
              flush=True)
    for ckpt in (False, True):
        if ckpt:
            del policy
            if device.type == "cuda":
                torch.cuda.empty_cache()
            policy = build_policy(size, device, dtype, grad_ckpt=True)
        policy.train()
        value = ValueHead(policy.feature_dim).to(device)
        for M in minibatches:
            inputs = policy.prepare(observations(M, image_size))
            actions = torch.randint(0, 256, (M, 7), device=device)

            def update(inputs=inputs, actions=actions, policy=policy, value=value):
                ev = policy.evaluate(inputs, actions)
                loss = -ev.logp.sum(-1).mean() + value(ev.features).pow(2).mean()
                loss.backward()
                policy.zero_grad(set_to_none=True)
                value.zero_grad(set_to_none=True)

            t_upd, m_upd = measure(update, device, repeats)
            rows["update"].append(dict(minibatch=M, gradient_checkpointing=ckpt, samples_per_s=M / t_upd,
                                       peak_mib=m_upd))
            print(f"[{size}] update M={M} ckpt={ckpt}: {M / t_upd:.2f} samples/s, peak {m_upd:.0f} MiB", flush=True)
    params = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return dict(size=size, device=str(device), dtype=str(dtype), parameters=params, trainable=trainable, **rows)


def bench_oft(size: str, device: torch.device, dtype: torch.dtype, batch_sizes: list[int], minibatches: list[int],
              repeats: int) -> dict:
    """OpenVLA-OFT's chunk (8 x 7): parallel ``act`` vs the HF forward baseline vs autoregressive decoding (module
    doc), and the update over the 56 tokens."""
    from vla_structppo.policies.parallel_decoding import ParallelLayout, bidirectional_mask, zeroed_slots
    from vla_structppo.policies.vla import VLAPolicy

    H, A = 8, 7
    policy = build_policy(size, device, dtype, grad_ckpt=False, chunk_size=H, decoding="parallel")
    sequential = VLAPolicy(policy.model, policy.processor, policy.action_tokenizer, policy.arch, chunk_size=H).to(device)
    image_size = SIZES[size]["image_size"]
    rows: dict[str, list] = {"act": [], "update": []}
    for B in batch_sizes:
        inputs = policy.prepare(observations(B, image_size))

        def act(inputs=inputs):
            with torch.no_grad():
                return policy.act(inputs, deterministic=True).actions

        def hf_forward(inputs=inputs):
            with torch.no_grad():
                base = policy.base_model
                layout = ParallelLayout.build(inputs["input_ids"], inputs["attention_mask"], H * A,
                                              int(policy.bin_token_ids[0]), policy.stop_token_id)
                mask = bidirectional_mask(base.config.get_text_config(), layout.attention_mask, base.dtype)
                pos = layout.attention_mask.long().cumsum(-1) - 1
                with zeroed_slots(base.get_input_embeddings(), layout.slots):
                    embeds = base.embed(layout.input_ids, inputs["pixel_values"].to(base.dtype))
                logits = base.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits
                return logits[:, layout.logit_positions].argmax(-1)

        def autoregressive(inputs=inputs):
            with torch.no_grad():
                return sequential.act(inputs, deterministic=True).actions

        timing = {name: measure(fn, device, repeats) for name, fn in
                  (("act", act), ("hf_forward", hf_forward), ("autoregressive", autoregressive))}
        (t_act, m_act), (t_hf, m_hf), (t_ar, m_ar) = timing.values()
        rows["act"].append(dict(batch=B, act_steps_per_s=H * B / t_act, hf_steps_per_s=H * B / t_hf,
                                ar_steps_per_s=H * B / t_ar, act_over_hf=t_hf / t_act, act_over_ar=t_ar / t_act,
                                act_peak_mib=m_act, hf_peak_mib=m_hf, ar_peak_mib=m_ar))
        print(f"[oft {size}] B={B}: act {H * B / t_act:.1f} env-steps/s, HF forward {H * B / t_hf:.1f} "
              f"({t_hf / t_act:.2f}x), autoregressive {H * B / t_ar:.1f} ({t_ar / t_act:.2f}x)", flush=True)
    policy.train()
    for M in minibatches:
        inputs = policy.prepare(observations(M, image_size))
        actions = torch.randint(0, 256, (M, H * A), device=device)

        def update(inputs=inputs, actions=actions):
            loss = -policy.evaluate(inputs, actions).logp.sum(-1).mean()
            loss.backward()
            policy.zero_grad(set_to_none=True)

        t_upd, m_upd = measure(update, device, repeats)
        rows["update"].append(dict(minibatch=M, gradient_checkpointing=False, samples_per_s=M / t_upd, peak_mib=m_upd))
        print(f"[oft {size}] update M={M}: {M / t_upd:.2f} decisions/s, peak {m_upd:.0f} MiB", flush=True)
    params = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return dict(size=size, device=str(device), dtype=str(dtype), parameters=params, trainable=trainable, oft=True,
                **rows)


def oft_tables(r: dict) -> str:
    out = [f"OpenVLA-OFT chunk 8 x 7, `{r['size']}` on {r['device']} ({r['dtype']}): {r['parameters'] / 1e6:.0f}M "
           f"parameters, {r['trainable'] / 1e6:.1f}M trainable (LoRA r=32)", "",
           "| batch | act (parallel) env-steps/s | HF forward env-steps/s | autoregressive env-steps/s | act / HF | "
           "act / autoregressive | peak MiB act / HF / AR |", "|---|---|---|---|---|---|---|"]
    out += [f"| {a['batch']} | {a['act_steps_per_s']:.1f} | {a['hf_steps_per_s']:.1f} | {a['ar_steps_per_s']:.1f} | "
            f"{a['act_over_hf']:.2f}x | {a['act_over_ar']:.2f}x | {a['act_peak_mib']:.0f} / {a['hf_peak_mib']:.0f} / "
            f"{a['ar_peak_mib']:.0f} |" for a in r["act"]]
    out += ["", "| minibatch (decisions) | update decisions/s | peak MiB |", "|---|---|---|"]
    out += [f"| {u['minibatch']} | {u['samples_per_s']:.2f} | {u['peak_mib']:.0f} |" for u in r["update"]]
    return "\n".join(out)


def tables(r: dict) -> str:
    out = [f"OpenVLA `{r['size']}` on {r['device']} ({r['dtype']}): {r['parameters'] / 1e6:.0f}M parameters, "
           f"{r['trainable'] / 1e6:.1f}M trainable (LoRA r=32)", "",
           "| batch | act env-steps/s | generate env-steps/s | act / generate | act peak MiB | generate peak MiB |",
           "|---|---|---|---|---|---|"]
    out += [f"| {a['batch']} | {a['act_steps_per_s']:.2f} | {a['generate_steps_per_s']:.2f} | "
            f"{a['act_over_generate']:.2f}x | {a['act_peak_mib']:.0f} | {a['generate_peak_mib']:.0f} |" for a in r["act"]]
    out += ["", "| minibatch | gradient checkpointing | update samples/s | peak MiB |", "|---|---|---|---|"]
    out += [f"| {u['minibatch']} | {'on' if u['gradient_checkpointing'] else 'off'} | {u['samples_per_s']:.2f} | "
            f"{u['peak_mib']:.0f} |" for u in r["update"]]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="vision-full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 64])
    ap.add_argument("--minibatches", nargs="+", type=int, default=[8, 32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--oft", action="store_true", help="OpenVLA-OFT's chunk of 8 x 7, parallel-decoded (module doc)")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    if args.oft:
        result = bench_oft(args.size, device, dtype, args.batch_sizes, args.minibatches, args.repeats)
        print("\n" + oft_tables(result))
    else:
        result = bench(args.size, device, dtype, args.batch_sizes, args.minibatches, args.repeats)
        print("\n" + tables(result))
    RESULTS.mkdir(exist_ok=True)
    name = f"openvla{'_oft' if args.oft else ''}_throughput_{args.size}_{device.type}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
