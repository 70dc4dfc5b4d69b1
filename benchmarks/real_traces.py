"""Real traces that ship in libCacheSim's source distribution, fetched from PyPI.

libCacheSim's sdist (``libcachesim==0.3.5``, the peers' package) carries two production
traces as test data; the package index is reachable from a fresh machine, so
``bench_hit_ratio.py`` can add them to its table without anything committed here:

- ``cloudPhysicsIO.txt``: a block I/O trace of a VMware virtual disk from CloudPhysics
  (Waldspurger et al., FAST 2015), one block number per line: 113,872 reads, 48,974 blocks.
- ``twitter_cluster52.csv``: the first 1,000,000 requests of Twitter's in-memory cache
  cluster 52 (Yang et al., OSDI 2020), ``time, object, size, next_access_vtime``: 143,542
  objects. The sizes are ignored (the memory tier counts entries).
- ``twitter_cluster52_10m.csv.zst``: the same cluster's first 10,000,000 requests (the file
  above is its first million), zstd-compressed; :func:`twitter_cluster52_slice` reads a later
  stretch of it (decompressed with the ``zstd`` command).

The sdist is downloaded once (81 MB) into ``build/traces`` and the three files extracted there.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "libcachesim==0.3.5"
#: The members of the sdist that hold the traces, and the names they are extracted to.
MEMBERS = {
    "libcachesim-0.3.5/src/libCacheSim/data/cloudPhysicsIO.txt": "cloudPhysicsIO.txt",
    "libcachesim-0.3.5/src/libCacheSim/data/twitter_cluster52.csv": "twitter_cluster52.csv",
    "libcachesim-0.3.5/src/libCacheSim/data/twitter_cluster52_10m.csv.zst": (
        "twitter_cluster52_10m.csv.zst"
    ),
}
DEFAULT_FOLDER = Path(__file__).resolve().parent.parent / "build" / "traces"


def fetch(folder: Path = DEFAULT_FOLDER) -> Path | None:
    """The folder holding both traces, downloading the sdist if needed (None if it cannot)."""
    if all((folder / name).exists() for name in MEMBERS.values()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    download += ["--no-binary", ":all:", "--dest", str(folder), SDIST]
    if subprocess.run(download, check=False).returncode != 0:
        print(f"(real traces skipped: could not download {SDIST})")
        return None
    archive = next(folder.glob("libcachesim-*.tar.gz"))
    with tarfile.open(archive) as sdist:
        for member, name in MEMBERS.items():
            source = sdist.extractfile(member)
            if source is None:
                raise RuntimeError(f"{archive.name} has no file {member}")
            (folder / name).write_bytes(source.read())
    archive.unlink()
    return folder


def cloudphysics_keys(folder: Path) -> list[str]:
    """The block numbers of the CloudPhysics trace, in order."""
    with (folder / "cloudPhysicsIO.txt").open(encoding="ascii") as lines:
        return [stripped for line in lines if (stripped := line.strip())]


def twitter_cluster52_keys(folder: Path) -> list[str]:
    """The object ids of Twitter cluster 52's first million requests, in order."""
    keys = []
    with (folder / "twitter_cluster52.csv").open(encoding="ascii") as lines:
        for line in lines:
            if not line.startswith("#"):
                keys.append(line.split(",", 2)[1].strip())
    return keys


def twitter_cluster52_slice(folder: Path, start: int, stop: int) -> list[str] | None:
    """The object ids of requests ``start`` to ``stop`` (0-based, end excluded) of cluster
    52's ten million, or None without the ``zstd`` command."""
    zstd = shutil.which("zstd")
    if zstd is None:
        return None
    command = [zstd, "-dc", str(folder / "twitter_cluster52_10m.csv.zst")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        requests = (line for line in process.stdout if not line.startswith("#"))
        keys = [line.split(",", 2)[1].strip() for line in itertools.islice(requests, start, stop)]
        process.kill()
    return keys
