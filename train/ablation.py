"""Ablation of the training recipe: RL only, imitation only, imitation + RL, each with and without
the contrastive head, on one or more datasets. Prints a markdown table and writes it as JSON.

    MATCHENV_DATA=/path/to/mnist python train/ablation.py --env-ids all --jobs 2

Each configuration is one ``train/ppo_lstm.py`` run in its own process (``--threads`` torch
threads each, ``--jobs`` at a time). "Imitation only" is read from the imitation + RL run at
the end of its imitation stage: that checkpoint is exactly what ``--no-ppo`` would train with the
same seed, so it needs no run of its own. Success is measured on the first ``--eval-pairs``
pairs of each dataset's fixed test split; minutes are wall-clock per stage, so they depend on
``--jobs``/``--threads`` and on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matchenv

TRAIN = Path(__file__).with_name("ppo_lstm.py")


def configurations(args: argparse.Namespace) -> dict[str, list[str]]:
    """Run name -> extra ``ppo_lstm.py`` flags."""
    runs = {}
    for aux, aux_flags in (("contrastive", []), ("no-contrastive", ["--aux-weight", "0"])):
        runs[f"rl-only_{aux}"] = ["--no-imitation", "--ppo-timesteps", str(args.rl_only_steps), *aux_flags]
        runs[f"imitation+rl_{aux}"] = [
            "--imitation-steps", str(args.imitation_steps), "--ppo-timesteps", str(args.ppo_steps), *aux_flags,
        ]
    return runs


def run_one(env_id: str, name: str, flags: list[str], args: argparse.Namespace) -> Path:
    out_dir = Path(args.out_dir) / env_id / name
    if args.skip_existing and (out_dir / "summary.json").exists():
        print(f"{env_id} {name}: kept the finished run in {out_dir}", flush=True)
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(TRAIN), "--env-id", env_id, "--seed", str(args.seed), "--threads", str(args.threads),
           "--eval-pairs", str(args.eval_pairs), "--eval-every", str(args.eval_every), "--render-pairs", "4",
           "--out-dir", str(out_dir), *flags]
    start = time.time()
    with open(out_dir / "train.log", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    status = "ok" if code == 0 else f"FAILED (exit {code}, see {out_dir / 'train.log'})"
    print(f"{env_id} {name}: {status} in {(time.time() - start) / 60:.1f} min", flush=True)
    return out_dir


def rows_for(env_id: str, out_dir: Path, name: str) -> list[dict]:
    summary_file = out_dir / "summary.json"
    if not summary_file.exists():
        return [{"env_id": env_id, "recipe": name, "success_rate": None}]
    summary = json.loads(summary_file.read_text())
    aux = "yes" if summary["args"]["aux_weight"] > 0 else "no"
    if name.startswith("rl-only"):
        return [{"env_id": env_id, "recipe": "RL only", "contrastive": aux, "success_rate": summary["final"]["success_rate"],
                 "mean_iou": summary["final"]["mean_iou"], "steps": summary["ppo_steps"], "minutes": summary["minutes"]["ppo"]}]
    imitation_steps = summary["imitation_steps"]
    at_handover = [e for e in summary["evaluations"] if e["step"] == imitation_steps]
    return [
        {"env_id": env_id, "recipe": "imitation only", "contrastive": aux,
         "success_rate": at_handover[-1]["success_rate"] if at_handover else None,
         "mean_iou": at_handover[-1]["mean_iou"] if at_handover else None,
         "steps": imitation_steps, "minutes": summary["minutes"]["imitation"]},
        {"env_id": env_id, "recipe": "imitation + RL", "contrastive": aux, "success_rate": summary["final"]["success_rate"],
         "mean_iou": summary["final"]["mean_iou"], "steps": imitation_steps + summary["ppo_steps"],
         "minutes": round(summary["minutes"]["imitation"] + summary["minutes"]["ppo"], 2)},
    ]


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | recipe | contrastive head | test success | mean IoU | env steps | minutes |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        success = "no result" if r["success_rate"] is None else f"{r['success_rate']:.3f}"
        iou = "" if r.get("mean_iou") is None else f"{r['mean_iou']:.2f}"
        lines.append(f"| {r['env_id']} | {r['recipe']} | {r.get('contrastive', '')} | {success} | {iou} | "
                     f"{r.get('steps', '')} | {r.get('minutes', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-ids", default="all", help="comma-separated registered ids, or 'all' (one per dataset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--imitation-steps", type=int, default=400_000)
    parser.add_argument("--ppo-steps", type=int, default=200_000)
    parser.add_argument("--rl-only-steps", type=int, default=200_000)
    parser.add_argument("--eval-pairs", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=200_000)
    parser.add_argument("--out-dir", default="runs/ablation")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from finished runs")
    parser.add_argument("--skip-existing", action="store_true", help="keep runs that already have a summary.json")
    args = parser.parse_args()
    env_ids = [i for i in matchenv.ENV_IDS if i != "TemplateSearch-v0"] if args.env_ids == "all" else args.env_ids.split(",")

    jobs = [(env_id, name, flags) for env_id in env_ids for name, flags in configurations(args).items()]
    if not args.table_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_one(*job, args), jobs))
    rows = [row for env_id, name, _ in jobs for row in rows_for(env_id, Path(args.out_dir) / env_id / name, name)]
    table = markdown(rows)
    print(table)
    (Path(args.out_dir) / "ablation.json").write_text(json.dumps(rows, indent=2))
    (Path(args.out_dir) / "ablation.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
