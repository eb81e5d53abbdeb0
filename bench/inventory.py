"""The number inventory at a large provider's size: for each size, the import time (the CLI's
`numbers import` of a CSV of single numbers), the load time and RSS of a worker (a fresh
process loading the store, as a worker does at start and on every change) and the lookup
time (owned and unowned numbers, in that process).

    .venv/bin/python -m bench.inventory [--sizes 100000,1000000,10000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import ROOT

CONFIG = """
[dialer]
listen = "127.0.0.1:5060"
next_hop = "127.0.0.1:5082"

[carrier]
listen = "127.0.0.1:5062"
next_hop = "127.0.0.1:5080"

[store]
path = "{db}"

[[signing]]
dev_spc = "123A"
key = "{dir}/keys/key.pem"
certificate = "{dir}/keys/cert.pem"
chain = "{dir}/keys/chain.pem"
x5u = "https://cr.example.com/c.pem"
{accounts}
"""

# Run in a fresh interpreter: what one worker holds after loading the store.
WORKER = r"""
import json, random, resource, sys, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
from stirshaken_proxy.store.sqlite import NumberStore
from stirshaken_proxy.policy.inventory import Inventory
before = rss()
t = time.perf_counter()
store = NumberStore(sys.argv[1])
inventory = store.load()
load = time.perf_counter() - t
store.close()
after = rss()
n = int(sys.argv[2])
rng = random.Random(1)
owned = [str(12000000000 + rng.randrange(n) * 7) for _ in range(200_000)]
unowned = [str(12000000000 + rng.randrange(n) * 7 + 1) for _ in range(200_000)]
def per_lookup(numbers):
    owner = inventory.owner
    t = time.perf_counter()
    for tn in numbers:
        owner(tn)
    return (time.perf_counter() - t) / len(numbers) * 1e9
assert all(inventory.owner(tn) is not None for tn in owned[:1000])
assert all(inventory.owner(tn) is None for tn in unowned[:1000])
print(json.dumps({"load_s": load, "rss_before_mb": before, "rss_after_mb": after,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "lookup_owned_ns": per_lookup(owned), "lookup_unowned_ns": per_lookup(unowned),
                  "entries": len(inventory)}))
"""


def run(size: int, workdir: Path) -> dict[str, float]:
    db = workdir / f"inv-{size}.db"
    accounts = "".join(f'\n[[accounts]]\nname = "acct{i}"\norigid = '
                       f'"5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e{i:02d}"\n' for i in range(50))
    cfg = workdir / f"inv-{size}.toml"
    cfg.write_text(CONFIG.format(db=db, dir=workdir, accounts=accounts))
    csv = workdir / f"inv-{size}.csv"
    with open(csv, "w") as f:
        f.write("tn,account\n")
        for i in range(size):  # every 7th number: no two adjacent, no ranges
            f.write(f"{12000000000 + i * 7},acct{i % 50}\n")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "stirshaken_proxy", "numbers", "import",
                          "--config", str(cfg), str(csv)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    imported = time.perf_counter() - t
    assert f"{size} numbers" in out.stdout, out.stdout
    worker = subprocess.run([sys.executable, "-c", WORKER, str(db), str(size)], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    result: dict[str, float] = {"numbers": size, "import_s": imported,
                                **json.loads(worker.stdout)}
    for path in (db, csv):
        path.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(int(n), Path(tmp)) for n in args.sizes.split(",")]
    sys.stdout.write("| numbers | import | load | worker RSS (empty → loaded, peak) | "
                     "lookup owned / unowned |\n|---|---|---|---|---|\n")
    for r in rows:
        sys.stdout.write(
            f"| {int(r['numbers']):,} | {r['import_s']:.1f} s | {r['load_s']:.2f} s | "
            f"{r['rss_before_mb']:.0f} → {r['rss_after_mb']:.0f} MB ({r['peak_mb']:.0f}) | "
            f"{r['lookup_owned_ns'] / 1000:.2f} / {r['lookup_unowned_ns'] / 1000:.2f} µs |\n")


if __name__ == "__main__":
    main()
