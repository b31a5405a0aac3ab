"""The race: Overnight on vLLM against ``vllm run-batch``, same prompts, same engine.

One command (in a venv with the ``vllm`` extra)::

    python bench/race_vllm.py                     # 256 requests x 64 tokens, then 2,000 cross-batch
    python bench/race_vllm.py --cross-requests 0  # skip the cross-batch part

Part 1, 256 chat requests, each exactly ``--tokens`` new tokens (``ignore_eos`` on the
vLLM sides, so every side generates the same tokens), greedy:

- ``vllm run-batch``: an OpenAI batch file through ``python -m vllm.entrypoints.openai.run_batch``;
- ``overnight run`` on ``smollm2-135m-instruct-vllm``: the same prompts as a Gemini batch file;
- ``overnight run`` on ``smollm2-135m-instruct`` (the transformers backend; it stops at
  EOS, so it may generate fewer tokens: its rate is over the tokens it did generate);
- vLLM's bare ``LLM.generate`` on token ids: the engine's own ceiling.

Every vLLM side loads the same converted folder with the same settings: bfloat16, eager,
``max_num_seqs`` 256, ``max_model_len`` 2048, 4 GiB of KV cache, OpenMP threads bound to
every core, none reserved.

Measures, per side:
- **wall**: process start to exit, start-up included;
- **generation phase**: from the moment the engine is ready until the results are
  written. ``run-batch``: from its "Reading batch" log line (printed once the engine is
  up) to its output file's last write (not its exit, which adds vLLM's shutdown).
  ``overnight run``: the time its summary reports after model start-up ("this run
  processed N requests in X s"), which ends once the results file is written.
  ``LLM.generate``: the ``generate`` call alone. tokens/s = generated tokens / that time;
- **peak RSS**: the largest sum of resident memory over the process and all its
  descendants (engine core included), sampled every 0.2 s from /proc.

Part 2, cross-batch continuous batching: ``--cross-requests`` requests split into
``--cross-batches`` files (``--cross-tokens`` each). Overnight: one ``overnight serve``, every batch submitted at
once through the Gemini API (google-genai SDK), timed from server start until the last
batch succeeds. run-batch: the same files one after another, each its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

NAME = "smollm2-135m-instruct-vllm"
SETTINGS = {"max_num_seqs": 256, "max_model_len": 2048, "kv_cache_space": 4}
TOPICS = ["a lighthouse", "a robot", "the ocean", "a small town", "a dragon", "winter", "a clock"]


@dataclass
class Side:
    name: str
    wall_s: float
    gen_s: float
    tokens: int
    peak_rss_mb: float
    requests: int

    @property
    def rate(self) -> float:
        return self.tokens / self.gen_s if self.gen_s > 0 else 0.0


# ---- processes: timed, with their output lines stamped and the tree's RSS sampled ------


def _tree_rss_kib(root: int) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            rss[pid] = int(fields[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def run_timed(
    cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float = 3600
) -> tuple[float, float, list[tuple[float, str]]]:
    """Run ``cmd``; return (wall seconds, peak tree RSS MiB, stamped output lines)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[tuple[float, str]] = []
    peak = 0

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        if time.monotonic() - started > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    wall = time.monotonic() - started
    reader.join(10)
    log.write_text("\n".join(f"{t:8.2f} {line}" for t, line in lines) + "\n")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed (rc={proc.returncode}); see {log}")
    return wall, peak / 1024, lines


# ---- inputs ------------------------------------------------------------------------------


def prompts(n: int, offset: int = 0) -> list[str]:
    return [
        f"Write a short story about {TOPICS[(i + offset) % len(TOPICS)]}, number {i + offset}."
        for i in range(n)
    ]


def write_gemini(path: Path, texts: list[str], tokens: int) -> Path:
    with path.open("w") as f:
        for i, text in enumerate(texts):
            request = {
                "contents": [{"role": "user", "parts": [{"text": text}]}],
                "generationConfig": {"maxOutputTokens": tokens, "temperature": 0},
            }
            f.write(json.dumps({"key": f"r{i}", "request": request}) + "\n")
    return path


def write_openai(path: Path, texts: list[str], tokens: int, model: str) -> Path:
    with path.open("w") as f:
        for i, text in enumerate(texts):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return path


def overnight_config(path: Path, max_batch_size: int = 256) -> None:
    options = ", ".join(f"{k} = {v}" for k, v in {**SETTINGS, "ignore_eos": "true"}.items())
    path.write_text(
        f'[models.{NAME}]\nbackend = "vllm"\nmax_batch_size = {max_batch_size}\n'
        f"options = {{ {options} }}\n"
    )


def vllm_env() -> dict[str, str]:
    cores = sorted(os.sched_getaffinity(0))
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(SETTINGS["kv_cache_space"]),
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def run_batch_cmd(folder: Path, src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(src),
        "-o",
        str(out),
        "--model",
        str(folder),
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--max-num-seqs",
        str(SETTINGS["max_num_seqs"]),
        "--max-model-len",
        str(SETTINGS["max_model_len"]),
        "--generation-config",
        "vllm",
        "--disable-log-stats",
    ]


def converted_folder(work: Path) -> Path:
    """The folder the vllm backend converts the bundled GGUF into (created once)."""
    import asyncio

    from overnight.backends.vllm import VllmBackend
    from overnight.config import builtin_models

    backend = VllmBackend(NAME, builtin_models()[NAME], work / "models")
    return Path(asyncio.run(asyncio.to_thread(backend._weights_folder)))


# ---- the sides -----------------------------------------------------------------------------


def side_run_batch(work: Path, folder: Path, src: Path, tag: str) -> Side:
    out = work / f"{tag}.out.jsonl"
    started = time.time()
    wall, rss, lines = run_timed(
        run_batch_cmd(folder, src, out), cwd=work, env=vllm_env(), log=work / f"{tag}.log"
    )
    ready = next((t for t, line in lines if "Reading batch from" in line), None)
    if ready is None:
        raise SystemExit(f"no 'Reading batch from' line in {work / f'{tag}.log'}")
    # The phase ends when the results are written, as Overnight's does (not at exit,
    # which adds vLLM's shutdown and the interpreter's teardown).
    written = out.stat().st_mtime - started
    tokens = requests = 0
    for raw in out.read_text().splitlines():
        body = json.loads(raw)["response"]["body"]
        tokens += body["usage"]["completion_tokens"]
        requests += 1
    return Side("vllm run-batch", wall, written - ready, tokens, rss, requests)


_PROCESSED = re.compile(r"processed (\d+) requests in ([\d.]+) s")
_TOKENS = re.compile(r"\+ (\d+) output")


def side_overnight(work: Path, src: Path, model: str, tag: str, label: str) -> Side:
    data = work / f"{tag}-data"
    shutil.rmtree(data, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "overnight.cli.main",
        "run",
        str(src),
        "-o",
        str(work / f"{tag}.out.jsonl"),
    ]
    cmd += ["-m", model, "-d", str(data), "-q"]
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(work / "models"), "COLUMNS": "200"}
    wall, rss, lines = run_timed(cmd, cwd=work, env=env, log=work / f"{tag}.log")
    text = "\n".join(line for _, line in lines)
    processed, tokens = _PROCESSED.search(text), _TOKENS.search(text)
    if processed is None or tokens is None:
        raise SystemExit(f"no summary in {work / f'{tag}.log'}")
    return Side(label, wall, float(processed[2]), int(tokens[1]), rss, int(processed[1]))


BARE = """
import json, sys, time
if __name__ == "__main__":
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    folder, tokens, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tok = AutoTokenizer.from_pretrained(folder)
    texts = json.load(open(path))
    ids = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                   tokenize=False) for t in texts]
    ids = tok(ids, add_special_tokens=False)["input_ids"]
    llm = LLM(model=folder, dtype="bfloat16", enforce_eager=True, max_num_seqs=%(seqs)d,
              max_model_len=%(len)d, generation_config="vllm", disable_log_stats=True)
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    t = time.monotonic()
    outs = llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
    gen = time.monotonic() - t
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"BARE tokens={n} gen_s={gen:.3f} requests={len(outs)}", flush=True)
"""


def side_bare(work: Path, folder: Path, texts: list[str], tokens: int) -> Side:
    script = work / "bare_generate.py"
    script.write_text(BARE % {"seqs": SETTINGS["max_num_seqs"], "len": SETTINGS["max_model_len"]})
    (work / "bare_prompts.json").write_text(json.dumps(texts))
    cmd = [sys.executable, str(script), str(folder), str(tokens), str(work / "bare_prompts.json")]
    wall, rss, lines = run_timed(cmd, cwd=work, env=vllm_env(), log=work / "bare.log")
    found = next(line for _, line in lines if line.startswith("BARE "))
    values = dict(part.split("=") for part in found.split()[1:])
    return Side(
        "vLLM LLM.generate (bare)",
        wall,
        float(values["gen_s"]),
        int(values["tokens"]),
        rss,
        int(values["requests"]),
    )


# ---- part 2: several batches at once ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cross_overnight(work: Path, files: list[Path]) -> tuple[float, float]:
    """One serve, every batch submitted at once; seconds until all succeeded, peak RSS."""
    import httpx
    from google import genai

    home = work / "serve"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    overnight_config(home / "overnight.toml")
    port = free_port()
    started = time.monotonic()
    env = {**os.environ, "OVERNIGHT_MODEL_CACHE_DIR": str(work / "models")}
    env["OVERNIGHT_ENGINE__POLL_SECONDS"] = "0.1"
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight.cli.main", "serve", "--port", str(port), "-d", "data"],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    peak = 0
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"overnight serve did not start; see {home / 'serve.log'}")
            time.sleep(0.2)
        client = genai.Client(api_key="x", http_options={"base_url": base})  # type: ignore[arg-type]
        jobs = []
        for path in files:
            file = client.files.upload(file=path, config={"mime_type": "jsonl"})
            jobs.append(client.batches.create(model=NAME, src=file.name).name)
        pending = set(jobs)
        while pending:
            peak = max(peak, _tree_rss_kib(proc.pid))
            for name in list(pending):
                state = client.batches.get(name=name).state.name
                if state == "JOB_STATE_SUCCEEDED":
                    pending.discard(name)
                elif state in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"):
                    raise SystemExit(f"batch {name} ended {state}; see {home / 'serve.log'}")
            time.sleep(0.5)
        return time.monotonic() - started, peak / 1024
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def cross_run_batch(work: Path, folder: Path, files: list[Path]) -> tuple[float, float]:
    total, peak = 0.0, 0.0
    for i, path in enumerate(files):
        out = work / f"cross-{i}.out.jsonl"
        wall, rss, _ = run_timed(
            run_batch_cmd(folder, path, out), cwd=work, env=vllm_env(), log=work / f"cross-{i}.log"
        )
        total += wall
        peak = max(peak, rss)
    return total, peak


# ---- main ------------------------------------------------------------------------------------


def table(sides: list[Side], reference: Side) -> str:
    rows = [
        "| side | requests | tokens | wall s (start-up incl.) | generation s | tokens/s | ÷ run-batch | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sides:
        rows.append(
            f"| {s.name} | {s.requests} | {s.tokens} | {s.wall_s:.1f} | {s.gen_s:.1f} | "
            f"{s.rate:.0f} | {s.rate / reference.rate:.2f}× | {s.peak_rss_mb:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--cross-requests", type=int, default=2000)
    parser.add_argument("--cross-batches", type=int, default=8)
    parser.add_argument("--cross-tokens", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma list: transformers,bare")
    parser.add_argument("--work", type=Path, default=Path(".race-vllm"))
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    skip = set(filter(None, args.skip.split(",")))

    folder = converted_folder(work)
    print(f"model folder: {folder}", flush=True)
    # Warm the page cache (vllm, torch, the weights) so the first side timed is not the
    # only one to read them from disk.
    subprocess.run([sys.executable, "-c", "import vllm, overnight.cli.main"], check=True)
    for path in folder.iterdir():
        path.read_bytes()
    texts = prompts(args.requests)
    gemini = write_gemini(work / "race.gemini.jsonl", texts, args.tokens)
    openai = write_openai(work / "race.openai.jsonl", texts, args.tokens, str(folder))
    overnight_config(work / "overnight.toml")

    sides = [side_run_batch(work, folder, openai, "run-batch")]
    print(f"run-batch: {sides[-1]}", flush=True)
    sides.append(side_overnight(work, gemini, NAME, "overnight-vllm", "overnight run (vllm)"))
    print(f"overnight: {sides[-1]}", flush=True)
    if "bare" not in skip:
        sides.append(side_bare(work, folder, texts, args.tokens))
        print(f"bare: {sides[-1]}", flush=True)
    if "transformers" not in skip:
        label = "overnight run (transformers)"
        sides.append(side_overnight(work, gemini, "smollm2-135m-instruct", "overnight-tf", label))
        print(f"transformers: {sides[-1]}", flush=True)
    print()
    print(f"## {args.requests} requests x {args.tokens} new tokens, {os.cpu_count()} cores\n")
    print(table(sides, sides[0]))
    overnight, run_batch = sides[1], sides[0]
    print(
        f"\nOvernight ÷ run-batch: generation {overnight.rate / run_batch.rate:.2f}×, "
        f"wall {overnight.wall_s / run_batch.wall_s:.2f}× (lower is better)"
    )
    bare = next((s for s in sides if "bare" in s.name), None)
    if bare is not None:
        print(f"Overnight ÷ LLM.generate: generation {overnight.rate / bare.rate:.2f}×")

    if args.cross_requests:
        per = -(-args.cross_requests // args.cross_batches)
        files = [
            write_gemini(work / f"cross-{b}.gemini.jsonl", prompts(per, b * per), args.cross_tokens)
            for b in range(args.cross_batches)
        ]
        openai_files = [
            write_openai(
                work / f"cross-{b}.openai.jsonl",
                prompts(per, b * per),
                args.cross_tokens,
                str(folder),
            )
            for b in range(args.cross_batches)
        ]
        serve_s, serve_rss = cross_overnight(work, files)
        print(
            f"\novernight serve, {args.cross_batches} batches at once: {serve_s:.1f} s", flush=True
        )
        batch_s, batch_rss = cross_run_batch(work, folder, openai_files)
        print(
            f"\n## {args.cross_requests} requests x {args.cross_tokens} tokens "
            f"in {args.cross_batches} batches\n"
        )
        print("| side | wall s | peak RSS MiB |\n|---|---:|---:|")
        print(
            f"| overnight serve, all batches submitted at once | {serve_s:.1f} | {serve_rss:.0f} |"
        )
        print(f"| run-batch, one file after another | {batch_s:.1f} | {batch_rss:.0f} |")
        print(f"\nOvernight ÷ run-batch wall: {serve_s / batch_s:.2f}× (lower is better)")


if __name__ == "__main__":
    main()
