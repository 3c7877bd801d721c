"""How /metrics behaves under load: the time a scrape takes with 1 000 connected clients
and 200 busy ones, and what scraping every second does to pgbench's TPS.

Against a running bench cluster and a pgdoorman started with PGD_METRICS_PORT (and
PGD_MAX_CONNECTIONS above 1 200):

    bench/pgcluster.sh start
    PGD_METRICS_PORT=9127 PGD_MAX_CONNECTIONS=1500 bench/pgdoorman.sh start
    python3 bench/metrics.py --port 6432 --metrics 9127

Prints the scrape times (median and slowest of 20), then pgbench -S TPS with 100 clients,
rounds with a 1 Hz scraper and without it alternating, and their ratio.
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request


def scrape(port: int) -> float:
    """One GET /metrics; its duration in seconds."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        response.read()
    return time.monotonic() - started


def pgbench(args: list, opts, seconds: int) -> subprocess.Popen:
    """pgbench against the pooler, in the background."""
    env = dict(os.environ, PGPASSWORD=opts.password, PGCONNECT_TIMEOUT="30")
    return subprocess.Popen(
        [
            "pgbench",
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            str(opts.port),
            "-U",
            opts.user,
            "-T",
            str(seconds),
            *args,
            opts.db,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def tps(output: str) -> float:
    """The TPS pgbench reported."""
    found = re.search(r"tps = ([\d.]+)", output)
    if found is None:
        raise SystemExit(f"pgbench failed:\n{output}")
    return float(found.group(1))


def scrape_under_load(opts) -> None:
    """1 000 idle clients (a script that only sleeps) and 200 busy ones; 20 scrapes."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("\\sleep 60 s\n")
        idle_script = f.name
    idle = pgbench(["-c", "1000", "-j", "4", "-f", idle_script], opts, 60)
    busy = pgbench(["-S", "-c", "200", "-j", "2"], opts, 60)
    time.sleep(15)
    times = []
    for _ in range(20):
        times.append(scrape(opts.metrics))
        time.sleep(0.5)
    idle.kill()
    busy.kill()
    idle.wait()
    busy.wait()
    os.unlink(idle_script)
    print(
        f"scrape with 1000 idle + 200 busy clients: median {statistics.median(times) * 1000:.1f} ms,"
        f" slowest {max(times) * 1000:.1f} ms (20 scrapes)"
    )


def _scraper(stop: threading.Event, port: int) -> None:
    while not stop.wait(1.0):
        scrape(port)


def scraping_cost(opts) -> None:
    """pgbench -S -c 100, rounds with and without a 1 Hz scraper, alternating."""
    results = {"without": [], "with": []}
    for _ in range(opts.rounds):
        for kind in ("without", "with"):
            stop = threading.Event()

            thread = threading.Thread(target=_scraper, args=(stop, opts.metrics)) if kind == "with" else None
            if thread is not None:
                thread.start()
            run = pgbench(["-S", "-c", "100", "-j", "2"], opts, opts.seconds)
            output = run.communicate()[0]
            stop.set()
            if thread is not None:
                thread.join()
            results[kind].append(tps(output))
    without, scraped = statistics.mean(results["without"]), statistics.mean(results["with"])
    print(f"pgbench -S -c 100: {without:.0f} TPS without scraping, {scraped:.0f} with a 1 Hz scrape")
    print(f"  rounds without: {results['without']}")
    print(f"  rounds with:    {results['with']}")
    print(f"  ratio {scraped / without:.3f}")


def main() -> None:
    """Run both measurements."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=6432, help="the pooler's port")
    ap.add_argument("--metrics", type=int, default=9127, help="its /metrics port")
    ap.add_argument("--user", default="bench")
    ap.add_argument("--db", default="bench")
    ap.add_argument("--password", default=os.environ.get("PGPASSWORD", "bench"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    opts = ap.parse_args()
    scrape_under_load(opts)
    scraping_cost(opts)


if __name__ == "__main__":
    main()
