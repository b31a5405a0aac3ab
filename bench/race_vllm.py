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
- vLLM's bare ``LLM.generate`` on token ids: the engine's own ceiling;
- a control: ``vllm run-batch`` with tcmalloc preloaded (``LD_PRELOAD``), which
  Overnight does for its engine by default (``options.cpu_allocator``) and run-batch
  leaves to the user. Only where the machine has tcmalloc.

The two main sides run ``--rounds`` times (default 3), alternating which goes first, and
each round's ratio compares two runs made back to back; the summary is the median. A
shared two-core machine drifts by ±5% from one minute to the next, as much as the
difference being measured. The other sides run once.

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
  descendants (engine core included), sampled every 0.5 s from /proc;
- **CPU in the generation phase**: CPU seconds of the front-end process (the one
  started: Overnight's, or run-batch's API layer) and of everything under it (vLLM's
  engine core and worker), from the same samples. On two cores every second the
  front-end takes is taken from the engine.

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
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from overnight.backends.vllm_runtime import find_tcmalloc

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
    # CPU seconds during the generation phase: the front-end process (the one started),
    # and everything under it (vLLM's engine core and its helpers)
    front_cpu_s: float = 0.0
    engine_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.tokens / self.gen_s if self.gen_s > 0 else 0.0


# ---- processes: timed, with their output lines stamped and the tree's RSS sampled ------


@dataclass
class Timed:
    wall_s: float
    peak_rss_mb: float
    lines: list[tuple[float, str]]
    # (seconds since start, CPU seconds of the process itself, CPU seconds of its descendants)
    cpu: list[tuple[float, float, float]]

    def cpu_between(self, start: float, end: float) -> tuple[float, float]:
        """CPU seconds (the process itself, its descendants) spent from ``start`` to ``end``."""

        def at(t: float) -> tuple[float, float]:
            before = [c for c in self.cpu if c[0] <= t]
            return before[-1][1:] if before else (0.0, 0.0)

        (own0, kids0), (own1, kids1) = at(start), at(end)
        return own1 - own0, kids1 - kids0


def _tree_sample(root: int, seen: dict[int, float]) -> tuple[int, float, float]:
    """(RSS KiB of the tree, CPU s of ``root``, CPU s of its descendants).

    ``seen`` keeps each descendant's last CPU reading, so one that has exited (the
    engine core, once a run is done) still counts.
    """
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            rss[pid] = int(fields[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
            cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        if pid != root and pid in cpu:
            seen[pid] = cpu[pid]
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total, cpu.get(root, 0.0), sum(seen.values())


def run_timed(
    cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float = 3600
) -> Timed:
    """Run ``cmd``, stamping its output lines and sampling its tree's RSS and CPU time."""
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
    cpu: list[tuple[float, float, float]] = []
    seen: dict[int, float] = {}
    peak = 0

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        rss, own, kids = _tree_sample(proc.pid, seen)
        peak = max(peak, rss)
        cpu.append((time.monotonic() - started, own, kids))
        if time.monotonic() - started > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.5)
    wall = time.monotonic() - started
    reader.join(10)
    log.write_text("\n".join(f"{t:8.2f} {line}" for t, line in lines) + "\n")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed (rc={proc.returncode}); see {log}")
    return Timed(wall, peak / 1024, lines, cpu)


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


def side_run_batch(
    work: Path,
    folder: Path,
    src: Path,
    tag: str,
    *,
    label: str = "vllm run-batch",
    env: dict[str, str] | None = None,
) -> Side:
    out = work / f"{tag}.out.jsonl"
    started = time.time()
    timed = run_timed(
        run_batch_cmd(folder, src, out),
        cwd=work,
        env={**vllm_env(), **(env or {})},
        log=work / f"{tag}.log",
    )
    ready = next((t for t, line in timed.lines if "Reading batch from" in line), None)
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
    front, engine = timed.cpu_between(ready, written)
    return Side(
        label,
        timed.wall_s,
        written - ready,
        tokens,
        timed.peak_rss_mb,
        requests,
        front,
        engine,
    )


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
    timed = run_timed(cmd, cwd=work, env=env, log=work / f"{tag}.log")
    text = "\n".join(line for _, line in timed.lines)
    processed, tokens = _PROCESSED.search(text), _TOKENS.search(text)
    done = next((t for t, line in timed.lines if _PROCESSED.search(line)), None)
    if processed is None or tokens is None or done is None:
        raise SystemExit(f"no summary in {work / f'{tag}.log'}")
    gen_s = float(processed[2])
    front, engine = timed.cpu_between(done - gen_s, done)
    return Side(
        label,
        timed.wall_s,
        gen_s,
        int(tokens[1]),
        timed.peak_rss_mb,
        int(processed[1]),
        front,
        engine,
    )


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
    timed = run_timed(cmd, cwd=work, env=vllm_env(), log=work / "bare.log")
    done, found = next((t, line) for t, line in timed.lines if line.startswith("BARE "))
    values = dict(part.split("=") for part in found.split()[1:])
    gen_s = float(values["gen_s"])
    front, engine = timed.cpu_between(done - gen_s, done)
    return Side(
        "vLLM LLM.generate (bare)",
        timed.wall_s,
        gen_s,
        int(values["tokens"]),
        timed.peak_rss_mb,
        int(values["requests"]),
        front,
        engine,
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
            peak = max(peak, _tree_sample(proc.pid, {})[0])
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
        timed = run_timed(
            run_batch_cmd(folder, path, out), cwd=work, env=vllm_env(), log=work / f"cross-{i}.log"
        )
        total += timed.wall_s
        peak = max(peak, timed.peak_rss_mb)
    return total, peak


# ---- main ------------------------------------------------------------------------------------


def table(sides: list[Side], reference: Side) -> str:
    rows = [
        "| side | requests | tokens | wall s (start-up incl.) | generation s | tokens/s "
        "| ÷ run-batch | peak RSS MiB | CPU s in generation: front-end + engine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sides:
        rows.append(
            f"| {s.name} | {s.requests} | {s.tokens} | {s.wall_s:.1f} | {s.gen_s:.1f} | "
            f"{s.rate:.0f} | {s.rate / reference.rate:.2f}× | {s.peak_rss_mb:.0f} | "
            f"{s.front_cpu_s:.1f} + {s.engine_cpu_s:.1f} |"
        )
    return "\n".join(rows)


def rounds_table(rounds: list[tuple[Side, Side]]) -> str:
    rows = [
        "\n| round | run-batch generation s (tokens/s) | Overnight generation s (tokens/s) "
        "| ratio | wall s, run-batch vs Overnight |",
        "|---:|---|---|---:|---|",
    ]
    for i, (b, o) in enumerate(rounds, 1):
        rows.append(
            f"| {i} | {b.gen_s:.1f} ({b.rate:.0f}) | {o.gen_s:.1f} ({o.rate:.0f}) | "
            f"{o.rate / b.rate:.2f}× | {b.wall_s:.1f} vs {o.wall_s:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--cross-requests", type=int, default=2000)
    parser.add_argument("--cross-batches", type=int, default=8)
    parser.add_argument("--cross-tokens", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma list: transformers,bare,control")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of run-batch against Overnight, alternating"
    )
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

    # The two main sides alternate, round after round (run-batch first in odd rounds,
    # Overnight first in even ones), so a slow spell of a shared machine hits both alike;
    # each round's ratio compares two runs made back to back.
    rounds: list[tuple[Side, Side]] = []
    for r in range(args.rounds):
        tag = f"-{r + 1}" if args.rounds > 1 else ""
        pair: dict[str, Side] = {}
        for which in ("run-batch", "overnight") if r % 2 == 0 else ("overnight", "run-batch"):
            if which == "run-batch":
                pair[which] = side_run_batch(work, folder, openai, f"run-batch{tag}")
            else:
                label = "overnight run (vllm)"
                pair[which] = side_overnight(work, gemini, NAME, f"overnight-vllm{tag}", label)
            print(f"round {r + 1}, {which}: {pair[which]}", flush=True)
        rounds.append((pair["run-batch"], pair["overnight"]))
    sides = [rounds[0][0], rounds[0][1]]
    tcmalloc = find_tcmalloc()
    if "control" not in skip and tcmalloc is not None:
        # Overnight preloads tcmalloc into its engine processes (options.cpu_allocator);
        # run-batch as users run it does not. This row gives run-batch the same.
        label = "vllm run-batch + tcmalloc preloaded (control)"
        env = {"LD_PRELOAD": tcmalloc}
        sides.append(side_run_batch(work, folder, openai, "control", label=label, env=env))
        print(f"control: {sides[-1]}", flush=True)
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
    print(rounds_table(rounds))
    ratios = sorted(o.rate / b.rate for b, o in rounds)
    walls = sorted(o.wall_s / b.wall_s for b, o in rounds)
    print(
        f"\nOvernight ÷ run-batch, median of {len(rounds)} round(s): generation "
        f"{statistics.median(ratios):.2f}× (rounds: {', '.join(f'{x:.2f}' for x in ratios)}), "
        f"wall {statistics.median(walls):.2f}× (lower is better)"
    )
    bare = next((s for s in sides if "bare" in s.name), None)
    if bare is not None:
        rate = statistics.median(o.rate for _, o in rounds)
        print(f"Overnight (median) ÷ LLM.generate: generation {rate / bare.rate:.2f}×")

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
