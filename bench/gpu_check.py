"""The Python half of bench/gpu_check.sh, the device check: checks, a stage wrapper, the report.

The CUDA path cannot be tested where there is no GPU, so one script, run on a GPU machine, proves it (the CUDA
tests), measures it (training, the benchmark) and judges it against its goals, PASS or FAIL, in one report.

    python -m bench.gpu_check missing                      the import names of missing packages, one line
    python -m bench.gpu_check preflight --device cuda --json F   machine, versions, TF32, which ops sync
    python -m bench.gpu_check setup WORK --device cuda --epochs 35   WORK/params.yaml for the check's runs
    python -m bench.gpu_check train baseline --json F      (in WORK) `python -m stages.train baseline`, in this
                                                           process, then its peak GPU memory, which the stage
                                                           does not report
    python -m bench.gpu_check report --work WORK --out DIR [--smoke]   the table and the goals, PASS/FAIL

Nothing here imports a package that may be missing before `missing` has said so.
"""
import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

from tools import stats  # the standard library only

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "study" / "runs"
VARIANTS = ("baseline", "mixup")  # what the check trains and judges: the variants study/runs holds CPU runs of
# import name -> the pip package that provides it; DVC is not needed: the stage scripts run directly.
NEEDED = {"torch": "torch", "numpy": "numpy", "tqdm": "tqdm", "ruamel.yaml": "ruamel.yaml", "PIL": "pillow",
          "pytest": "pytest"}
# The goals, for a full stage: 35 epochs of 1000 steps of 50 images.
GOAL_SECONDS, GOAL_EPOCHS, GOAL_EPOCH_STEPS, GOAL_MS_PER_STEP, GOAL_VS_DATALOADER = 10.0, 35, 1000, 0.3, 10.0


def missing():
    import importlib.util
    absent = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # ruamel absent altogether
            found = False
        if not found:
            absent.append(NEEDED[name])
    print(" ".join(absent))


def preflight(device, out):
    import torch

    from lenet_mixup.device import resolve_device
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    print(f"python {info['python']}, torch {info['torch']} (CUDA build {info['cuda_build']}), "
          f"CUDA available: {info['cuda_available']}")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible to torch here; this check needs one (or --cpu-smoke)")
        sys.exit(4)
    dev = resolve_device(device)  # what the stages do: prints the device, TF32 off on CUDA
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=torch.cuda.get_device_name(dev), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    cudnn_deterministic=torch.backends.cudnn.deterministic,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
        print(f"{info['gpu']} (compute capability {info['capability']}, {info['gpu_memory_gib']} GiB), cuDNN "
              f"{info['cudnn']}; TF32 matmul {info['tf32_matmul']}, TF32 cuDNN {info['tf32_cudnn']}; cuDNN "
              f"deterministic {info['cudnn_deterministic']}, benchmark {info['cudnn_benchmark']}")
        info["syncs"] = probe_syncs(dev)
    Path(out).write_text(json.dumps(info, indent=2) + "\n")


def probe_syncs(device):
    """Which of the ops the CUDA path runs make the host wait, by torch.cuda.set_sync_debug_mode("error"), every
    variant's draw and transform among them (lenet_mixup/variant.py: neither may sync, the graph captures both).

    The last one syncs by design: it shows that the probe can see a sync at all.
    """
    import torch
    import torch.nn.functional as F

    from lenet_mixup import variant
    from lenet_mixup.params import load_params
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(1000, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (1000,), device=device)
    order, counter, offsets = torch.randperm(1000, device=device), torch.zeros(1, dtype=torch.long, device=device), \
        torch.arange(50, device=device)
    losses, logits = torch.zeros(20, device=device), torch.randn(50, 10, device=device, requires_grad=True)
    variant_probes = {}
    for name in variant.available():
        module, params = variant.load(name), load_params(name, path=ROOT / "params.yaml")[name]
        draw = module.draw(params, x[:50].shape, device)
        variant_probes.update({
            f"{name}: draw (in the captured step)": lambda m=module, p=params: m.draw(p, x[:50].shape, device),
            f"{name}: transform (in the captured step)": lambda m=module, p=params, d=draw: m.transform(x[:50], d, p),
        })
    probes = {
        "randperm with a CUDA generator (each epoch's order)": lambda: torch.randperm(50_000, generator=generator,
                                                                                      device=device),
        **variant_probes,
        "copy_ device to device": lambda: order.copy_(torch.randperm(1000, device=device)),
        "fill_": lambda: losses.fill_(1.0),
        "index_select by a device counter": lambda: order.index_select(0, counter * 50 + offsets),
        "x[idx] gather": lambda: (x[order[:50]], y[order[:50]]),
        "index_copy_": lambda: losses.index_copy_(0, counter, losses[:1]),
        "roll": lambda: x[:50].roll(1, dims=0),
        "cross_entropy forward and backward": lambda: F.cross_entropy(logits, y[:50]).backward(),
        "tensor.item() (syncs by design: the control)": lambda: losses.sum().item(),
    }
    found, before = {}, torch.cuda.get_sync_debug_mode()
    for name, op in probes.items():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            op()
            found[name] = "no sync"
        except RuntimeError as e:
            found[name] = "syncs: " + str(e).splitlines()[0][:100]
        finally:
            torch.cuda.set_sync_debug_mode(before)
    print("host syncs (torch.cuda.set_sync_debug_mode('error')):")
    for name, result in found.items():
        print(f"  {name}: {result}")
    return found


def setup(work, device, epochs):
    """WORK/params.yaml: the project's params, with the settings the CPU study ran (fp32, seed 0, every step and
    eval image) and this check's device and epochs."""
    from lenet_mixup.params import dump_yaml, read_yaml
    params = read_yaml((ROOT / "params.yaml").read_text())
    params["train"].update(device=device, epochs=epochs, precision="fp32", seed=0, steps_per_epoch=None,
                           validation_steps=None)
    params["mixup"].update(alpha=1.0, warmup=1)
    Path(work).mkdir(parents=True, exist_ok=True)
    (Path(work) / "params.yaml").write_text(dump_yaml(params))
    print(f"{work}/params.yaml: train {params['train']}, mixup {params['mixup']}")


def train(variant, out):
    """`python -m stages.train VARIANT` in this process, and what it cannot report itself: its peak GPU memory."""
    import runpy

    import torch
    start, status = time.perf_counter(), 0
    sys.argv = ["stages.train", variant]
    try:
        runpy.run_module("stages.train", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        raise
    finally:
        record = {"variant": variant, "exit": status, "stage_wall_seconds": round(time.perf_counter() - start, 2)}
        if torch.cuda.is_initialized():
            record.update(peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1),
                          peak_gpu_reserved_mib=round(torch.cuda.max_memory_reserved() / 2**20, 1))
            print(f"{variant}: peak GPU memory {record['peak_gpu_mib']:.0f} MiB allocated, "
                  f"{record['peak_gpu_reserved_mib']:.0f} MiB reserved", flush=True)
        Path(out).write_text(json.dumps(record, indent=2) + "\n")


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cpu_runs(variant, alpha):
    """Every fp32 run of the variant (mixup: at this alpha) in the study's archive, lowest seed first."""
    from tools.runs import read_archive
    found = [r for r in read_archive(RUNS) if r.variant == variant
             and r.params.get("train.precision", "fp32") == "fp32"
             and (variant != "mixup" or float(r.params.get("mixup.alpha", "nan")) == float(alpha))]
    return sorted(found, key=lambda r: r.params.get("train.seed"))


def band(values):
    """The CPU seeds' spread of a metric: n, mean, sd, min, max and the 99% prediction interval of one more seed."""
    n = len(values)
    if n < 2:
        return {"n": n, "values": values}
    spread = stats.spread(values)
    half = stats.t_quantile(0.995, n - 1) * spread.sd * math.sqrt(1 + 1 / n)
    return {"n": n, "values": values, "mean": spread.mean, "sd": spread.sd, "min": min(values), "max": max(values),
            "low": spread.mean - half, "high": spread.mean + half}


def bench_rates(text):
    """{(variant, loop): img/s} from the benchmark's table."""
    rates = {}
    for variant, loop, rate in re.findall(r"^(baseline|mixup) +(project-bf16|project|dataloader|bare-fast|bare) +"
                                          r"(\d+) +\(", text, re.M):
        rates[variant, loop] = float(rate)
    return rates


def steps_done(work):
    """{step name: status} as the shell script recorded them."""
    path = Path(work) / "steps.tsv"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def report(work, out, smoke):
    work, out = Path(work), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from lenet_mixup.metrics import read_tsv
    from lenet_mixup.params import read_yaml
    params = read_yaml((work / "params.yaml").read_text())
    machine = read_json(work / "machine.json") or {}
    steps = steps_done(work)
    bench_text = (work / "bench.txt").read_text() if (work / "bench.txt").exists() else ""
    rates = bench_rates(bench_text)
    lines, goals, result = [], [], {"machine": machine, "steps": steps, "params": params, "variants": {},
                                    "benchmark_img_per_s": {f"{v} {k}": r for (v, k), r in rates.items()}}

    def say(text=""):
        lines.append(text)

    def goal(name, verdict, detail):
        goals.append({"goal": name, "verdict": verdict, "detail": detail})
        say(f"GOAL {name}: {detail} ... {verdict}")

    where = machine.get("gpu") or "CPU"
    say(f"device check on {where}: torch {machine.get('torch')}, TF32 off (lenet_mixup.device.resolve_device); "
        f"{params['train']['epochs']} epochs, batch {params['train']['batch_size']}")
    header = (f"{'variant':9}{'run':30}{'path':12}{'train s':>9}{'img/s':>9}{'ms/step':>9}{'GPU MiB':>9}"
              f"{'peak acc (epoch)':>18}{'final acc':>11}")
    say(header)
    for variant in VARIANTS:
        summary = read_json(work / "metrics" / variant / "summary.json")
        peak = read_json(work / f"train-{variant}.json") or {}
        rows = read_tsv(work / "metrics" / variant / "epochs.tsv") if summary else []
        cpu = cpu_runs(variant, params["mixup"]["alpha"])
        entry = {"summary": summary, "stage": peak, "cpu_runs": [r.run for r in cpu]}
        result["variants"][variant] = entry
        if summary:
            steps_total = sum(r["train_steps"] for r in rows)
            entry["ms_per_step"] = 1000 * summary["train_seconds"] / steps_total
            gpu_mib = f"{peak['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in peak else "-"
            say(f"{variant:9}{'this run (' + summary['device'] + ')':30}{summary['train_path']:12}"
                f"{summary['train_seconds']:9.1f}{summary['examples_per_sec']:9.0f}{entry['ms_per_step']:9.3f}"
                f"{gpu_mib:>9}{summary['peak_eval_acc']:12.4f} ({summary['peak_epoch']:2d})"
                f"{summary['final_eval_acc']:11.4f}")
            if summary.get("capture_error"):
                say(f"{'':9}capture failed: {summary['capture_error']}")
        else:
            say(f"{variant:9}this run: no summary ({steps.get('train ' + variant, 'not run')})")
        for r in cpu[:1]:  # the lowest seed: seed 0, the seed this check trains
            s = r.files["summary"]
            cpu_rows = read_tsv(r.folder / "epochs.tsv")
            cpu_ms = 1000 * s["train_seconds"] / cpu_rows[-1]["step"]
            say(f"{'':9}{'CPU ' + r.run:30}{'cpu':12}{s['train_seconds']:9.1f}"
                f"{s['examples_per_sec']:9.0f}{cpu_ms:9.3f}{'-':>9}{s['peak_eval_acc']:12.4f} ({s['peak_epoch']:2d})"
                f"{s['final_eval_acc']:11.4f}")
            if summary:
                say(f"{'':9}this run / the CPU run: {summary['examples_per_sec'] / s['examples_per_sec']:.1f}x the "
                    f"images per second (CPU host: {r.info.get('host')})")
        spreads = {m: band([r.files["summary"][m] for r in cpu]) for m in ("peak_eval_acc", "final_eval_acc")}
        entry["cpu_spread"] = spreads
        if spreads["peak_eval_acc"]["n"] >= 2:
            say(f"{'':9}CPU seeds (n={spreads['peak_eval_acc']['n']}): " + ", ".join(
                f"{m} {b['min']:.4f}-{b['max']:.4f}, mean {b['mean']:.4f} sd {b['sd']:.4f}"
                for m, b in spreads.items()))
        else:
            say(f"{'':9}CPU seeds: {spreads['peak_eval_acc']['n']} fp32 run(s) of {variant} in study/runs")
        evaluation = read_json(work / "metrics" / variant / "evaluation.json")
        if evaluation:
            cpu_eval = cpu[0].files["evaluation"] if cpu else None
            entry["evaluation"] = evaluation
            say(f"{'':9}evaluate: " + "; ".join(describe_evaluation(evaluation[w], cpu_eval and cpu_eval.get(w), w)
                                                 for w in ("final", "best") if w in evaluation))
    say()
    for variant in VARIANTS:
        entry = result["variants"][variant]
        summary = entry["summary"]
        if not summary:
            for name in ("speed", "vs DataLoader", "accuracy", "graph path"):
                goal(f"{name} ({variant})", "FAIL", "the training did not finish")
            continue
        rows = read_tsv(work / "metrics" / variant / "epochs.tsv")
        full = len(rows) == GOAL_EPOCHS and rows[-1]["step"] == GOAL_EPOCHS * GOAL_EPOCH_STEPS
        per_goal = summary["train_seconds"] if full else entry["ms_per_step"] * GOAL_EPOCHS * GOAL_EPOCH_STEPS / 1000
        goal(f"speed ({variant})", verdict(per_goal <= GOAL_SECONDS and entry["ms_per_step"] < GOAL_MS_PER_STEP),
             f"{len(rows)} epochs of {rows[-1]['train_steps']} steps in {summary['train_seconds']:.2f} s of training"
             + ("" if full else f" (a full stage, {GOAL_EPOCHS} x {GOAL_EPOCH_STEPS} steps, at this rate: "
                                f"{per_goal:.1f} s)")
             + f", {entry['ms_per_step']:.3f} ms per step (goal: {GOAL_EPOCHS} epochs in <= {GOAL_SECONDS:.0f} s, "
             f"< {GOAL_MS_PER_STEP} ms per step)")
        loader = rates.get((variant, "dataloader"))
        if loader:
            ratio = summary["examples_per_sec"] / loader
            goal(f"vs DataLoader ({variant})", verdict(ratio >= GOAL_VS_DATALOADER),
                 f"the stage trained {summary['examples_per_sec']:.0f} img/s, {ratio:.1f}x the benchmark's dataloader "
                 f"loop ({loader:.0f} img/s; goal >= {GOAL_VS_DATALOADER:.0f}x)")
        else:
            goal(f"vs DataLoader ({variant})", "FAIL", f"no dataloader figure from the benchmark "
                 f"({steps.get('benchmark', 'not run')})")
        judged = []
        for metric, spread in entry["cpu_spread"].items():
            value = summary[metric]
            if spread["n"] < 2:
                judged.append((None, f"{metric} {value:.4f}: not judged, {spread['n']} CPU seed(s) in study/runs "
                                     "(needs 2)"))
                continue
            inside = spread["low"] <= value <= spread["high"]
            judged.append((inside, f"{metric} {value:.4f} {'in' if inside else 'NOT in'} "
                                   f"[{spread['low']:.4f}, {spread['high']:.4f}] "
                                   f"(CPU seeds' 99% prediction interval, n={spread['n']}; their min-max "
                                   f"{spread['min']:.4f}-{spread['max']:.4f}: "
                                   f"{'inside' if spread['min'] <= value <= spread['max'] else 'outside'})"))
        known = [ok for ok, _ in judged if ok is not None]
        goal(f"accuracy ({variant})", "SKIP" if not known else verdict(all(known)), "; ".join(t for _, t in judged))
        goal(f"graph path ({variant})", verdict(summary["train_path"] == "cuda-graph"),
             f"train_path {summary['train_path']}" + (f", capture failed: {summary['capture_error']}"
                                                      if summary.get("capture_error") else ""))
    tests = (work / "pytest.txt").read_text().strip().splitlines()[-1:] if (work / "pytest.txt").exists() else []
    goal("CUDA tests", verdict(steps.get("tests", "").startswith("ok") and (smoke or not any("skipped" in t
                                                                                            for t in tests))),
         f"{steps.get('tests', 'not run')}: {tests[0] if tests else 'no output'}")
    failed_steps = [f"{name}: {status}" for name, status in steps.items() if not status.startswith("ok")]
    if failed_steps:
        say("steps not ok: " + "; ".join(failed_steps))
    if smoke:
        say("cpu smoke: the verdicts above judge plumbing only (CPU, small data, 1 epoch); the goals are for a GPU")
    result["goals"] = goals
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    for variant in VARIANTS:
        for name in ("summary.json", "epochs.tsv"):
            source = work / "metrics" / variant / name
            if source.exists():
                shutil.copy(source, out / f"{variant}-{name}")
    if (work / "bench.txt").exists():
        shutil.copy(work / "bench.txt", out / "bench.txt")
    print("\n".join(lines))
    return 0 if smoke or all(g["verdict"] != "FAIL" for g in goals) else 1


def describe_evaluation(gpu, cpu, which):
    fgsm = max(gpu["fgsm_acc"], key=lambda k: float(k.split("/")[0]))
    text = (f"{which} acc {gpu['accuracy']:.4f}, ECE {gpu['ece']:.4f}, FGSM {fgsm} {gpu['fgsm_acc'][fgsm]:.4f}")
    if cpu:
        text += f" (CPU seed: {cpu['accuracy']:.4f}, {cpu['ece']:.4f}, {cpu['fgsm_acc'].get(fgsm, math.nan):.4f})"
    return text


def verdict(ok):
    return "PASS" if ok else "FAIL"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("missing")
    p = sub.add_parser("preflight")
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--json", required=True)
    p = sub.add_parser("setup")
    p.add_argument("work")
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--epochs", type=int, default=GOAL_EPOCHS)
    p = sub.add_parser("train")
    p.add_argument("variant", choices=VARIANTS)
    p.add_argument("--json", required=True)
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.command == "missing":
        missing()
    elif args.command == "preflight":
        preflight(args.device, args.json)
    elif args.command == "setup":
        setup(args.work, args.device, args.epochs)
    elif args.command == "train":
        train(args.variant, args.json)
    else:
        sys.exit(report(args.work, args.out, args.smoke))


if __name__ == "__main__":
    main()
