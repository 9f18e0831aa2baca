"""data/remote.py: shards read over HTTP from a loopback server, through commands and a local cache."""

import hashlib
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from dist_gan.data.format import iter_images, open_shards
from dist_gan.data.remote import (FetchStats, RetryPolicy, ShardCache, expand_shorthand, member_url, open_url,
                                  read_small, sub_location)
from dist_gan.data.stream import StreamLoader
from dist_gan.errors import UserError
from loopback_http import LoopbackServer, free_port

FAST = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.02, timeout_s=5.0)


def _first_shard(root: Path) -> str:
    return sorted(p.name for p in root.glob("shard-*.tar"))[0]


# ------------------------------------------------------------------ locations
def test_member_urls_for_each_kind_of_location(tmp_path):
    assert member_url("http://h:1/a/b", "manifest.json") == "http://h:1/a/b/manifest.json"
    assert member_url("https://h/a/b/", "shard-000001.tar") == "https://h/a/b/shard-000001.tar"
    assert member_url("pipe:cat /x/{name}", "shard-000001.tar") == "pipe:cat /x/shard-000001.tar"
    assert member_url(str(tmp_path), "m.json") == str(tmp_path / "m.json")
    assert sub_location("http://h/a/", "holdout") == "http://h/a/holdout/"
    assert sub_location("pipe:cat /x/{name}", "holdout") == "pipe:cat /x/holdout/{name}"
    with pytest.raises(UserError, match=r"needs \{name\}"):
        member_url("pipe:cat /x/shard.tar", "manifest.json")


def test_store_shorthands_become_their_client_or_say_what_to_install(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(UserError, match="`aws` command, which is not on PATH"):
        expand_shorthand("s3://bucket/ffhq64/")
    with pytest.raises(UserError, match="gsutil"):
        expand_shorthand("gs://bucket/ffhq64")
    for exe in ("aws", "gsutil"):
        (bin_dir / exe).write_text("#!/bin/sh\n")
        (bin_dir / exe).chmod(stat.S_IRWXU)
    assert expand_shorthand("s3://bucket/ffhq64") == "pipe:aws s3 cp s3://bucket/ffhq64/{name} -"
    assert expand_shorthand("gs://bucket/ffhq64/") == "pipe:gsutil cat gs://bucket/ffhq64/{name}"


# ------------------------------------------------------------------ HTTP
def test_http_reads_survive_each_fault_and_count_it(shards32):
    name = _first_shard(shards32)
    want = (shards32 / name).read_bytes()
    for ranges in (True, False):  # with Range the read resumes; without, the server's full body is skipped into
        with LoopbackServer(shards32, ranges=ranges) as srv:
            srv.fail(name, "503", "reset", "truncate", "503")
            stats = FetchStats()
            with open_url(srv.url + name, FAST, stats) as fh:
                got = fh.read()
            assert got == want
            assert stats.retries == 4 and srv.count(name) == 5


def test_http_gives_up_after_its_retries_with_the_url_and_error(shards32):
    name = _first_shard(shards32)
    with LoopbackServer(shards32) as srv:
        srv.fail(name, *["503"] * 10)
        with pytest.raises(OSError, match="503"):
            open_url(srv.url + name, FAST, FetchStats()).read()
        assert srv.count(name) == FAST.retries + 1
        with pytest.raises(OSError, match="404"):  # a 4xx is not retried
            open_url(srv.url + "nope.tar", FAST, FetchStats())
        assert srv.count("nope.tar") == 1


def test_an_unreachable_manifest_is_one_line_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/celeba64/"
    with pytest.raises(UserError) as err:
        open_shards(url, FAST)
    msg = str(err.value)
    assert f"{url}manifest.json" in msg and "Connection" in msg and "\n" not in msg


def test_open_shards_and_iter_images_over_http_match_the_folder(shards32):
    local = open_shards(shards32)
    with LoopbackServer(shards32) as srv:
        remote = open_shards(srv.url, FAST)
        assert remote.remote and not local.remote
        assert remote.counts == local.counts and remote.resolution == local.resolution
        assert remote.urls == [srv.url + n for n in local.names]
        a = np.stack(list(iter_images(local)))
        b = np.stack(list(iter_images(remote)))
    assert a.shape[0] == 37 and np.array_equal(a, b)


def test_a_shard_that_changed_fails_its_manifest_hash(shards32, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(shards32, copy)
    name = _first_shard(copy)
    data = bytearray((copy / name).read_bytes())
    data[-1] ^= 1  # the tar's zero padding: still a valid tar, but not the bytes the manifest hashed
    (copy / name).write_bytes(bytes(data))
    with LoopbackServer(copy) as srv:
        with pytest.raises(UserError, match="sha256"):
            list(iter_images(open_shards(srv.url, FAST)))


# ------------------------------------------------------------------ commands
def test_pipe_locations_read_like_the_folder(shards32):
    remote = open_shards(f"pipe:cat {shards32}/{{name}}", FAST)
    assert np.array_equal(np.stack(list(iter_images(remote))), np.stack(list(iter_images(open_shards(shards32)))))


def test_a_failing_command_is_retried_then_reported(tmp_path):
    counter = tmp_path / "n"
    # fails twice (exit 1, nothing written), then prints
    cmd = f"pipe:sh -c 'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 2 ] && echo ok || exit 1' # {{name}}"
    stats = FetchStats()
    with open_url(member_url(cmd, "x"), FAST, stats) as fh:
        assert fh.read() == b"ok\n"
    assert stats.retries == 2
    with pytest.raises(UserError, match="exited 3"):
        read_small("pipe:sh -c 'echo boom >&2; exit 3'", FAST)


# ------------------------------------------------------------------ cache
def test_cache_fetches_once_checks_the_hash_and_stays_bounded(shards32, tmp_path):
    shards = open_shards(shards32)
    sizes = [(shards32 / n).stat().st_size for n in shards.names]
    cache = ShardCache(tmp_path / "cache", max_bytes=max(sizes) + min(sizes) // 2)  # room for one shard
    with LoopbackServer(shards32) as srv:
        for name, sha in zip(shards.names, shards.sha256):
            stats = FetchStats()
            path = cache.fetch(srv.url + name, name, sha, FAST, stats)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha and stats.bytes == path.stat().st_size
            again = FetchStats()
            assert cache.fetch(srv.url + name, name, sha, FAST, again) == path and again.bytes == 0
            assert srv.count(name) == 1
        kept = [p for p in (tmp_path / "cache").iterdir()]
        assert [p.name.split("-", 1)[1] for p in kept] == [shards.names[-1]]  # the last used; no temp files
        bad = shards.names[0]
        with pytest.raises(OSError, match="sha256"):
            cache.fetch(srv.url + bad, bad, "0" * 64, FAST, FetchStats())
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_a_shard_another_rank_evicts_the_moment_it_lands_is_still_read_whole(shards32, tmp_path, monkeypatch):
    """The race of a busy node made deterministic: every eviction (another rank's) removes the shard just renamed."""
    shards = open_shards(shards32)
    name, sha = shards.names[0], shards.sha256[0]
    monkeypatch.setattr(ShardCache, "evict", lambda self, keep=None: [p.unlink() for p in self.root.iterdir() if p.is_file()])
    cache = ShardCache(tmp_path / "cache", max_bytes=1 << 30)
    with LoopbackServer(shards32) as srv:
        with cache.open(srv.url + name, name, sha, FAST, FetchStats()) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == sha
        assert srv.count(name) == 1
    assert not list((tmp_path / "cache").iterdir())


def _read_all_through_cache(args) -> list:
    """One "rank": open every shard through a shared, tiny cache many times; the sha256 of each read."""
    url, root, names, shas, max_bytes = args
    cache = ShardCache(root, max_bytes=max_bytes)
    got = []
    for _ in range(6):
        for name, sha in zip(names, shas):
            with cache.open(url + name, name, sha, FAST, FetchStats()) as fh:
                got.append(hashlib.sha256(fh.read()).hexdigest() == sha)
    return got


def test_ranks_on_one_node_share_a_cache_that_evicts_under_them(shards32, tmp_path):
    import multiprocessing as mp

    shards = open_shards(shards32)
    smallest = min((shards32 / n).stat().st_size for n in shards.names)
    with LoopbackServer(shards32) as srv, mp.get_context("spawn").Pool(3) as pool:
        args = (srv.url, str(tmp_path / "cache"), shards.names, shards.sha256, smallest)  # room for about one shard
        results = pool.map(_read_all_through_cache, [args] * 3)
    assert all(all(r) for r in results) and sum(len(r) for r in results) == 3 * 6 * len(shards.names)
    left = list((tmp_path / "cache").iterdir())
    assert len(left) <= 2 and not [p for p in left if p.name.startswith(".")]  # whole shards only, no temp files


# ------------------------------------------------------------------ the training stream
def _batches(shards, n, **kw):
    loader = StreamLoader(shards, 8, rank=0, world_size=1, seed=3, workers=0, shuffle=10, chunk_batches=4, **kw)
    it = loader.batches()
    return [next(it).clone() for _ in range(n)], loader


def test_stream_over_http_and_through_the_cache_gives_the_folder_batches(shards32, tmp_path):
    want, _ = _batches(open_shards(shards32), 9)
    with LoopbackServer(shards32) as srv:
        srv.fail(_first_shard(shards32), "reset", "503")
        got, loader = _batches(open_shards(srv.url, FAST), 9, policy=FAST)
        cached, cloader = _batches(open_shards(srv.url, FAST), 9, policy=FAST,
                                   cache_dir=str(tmp_path / "c"), cache_bytes=1 << 30)
    assert all((a == b).all() for a, b in zip(want, got)) and all((a == b).all() for a, b in zip(want, cached))
    assert loader.retries == 2 and loader.bad_samples == 0 and not loader.failed_shards
    assert cloader.fetched_bytes == sum(p.stat().st_size for p in shards32.glob("shard-*.tar"))


def test_a_shard_that_never_answers_is_skipped_and_counted_and_the_steps_still_come(shards32):
    dead = _first_shard(shards32)
    with LoopbackServer(shards32) as srv, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        srv.fail(dead, *["503"] * 1000)
        got, loader = _batches(open_shards(srv.url, FAST), 12, policy=FAST)
    assert len(got) == 12 and all(b.shape == (8, 3, 32, 32) for b in got)
    assert srv.url + dead in loader.failed_shards and "503" in loader.failed_shards[srv.url + dead]
    assert loader.bad_samples >= 1 and loader.retries >= FAST.retries
    assert sum("cannot read" in str(w.message) for w in caught) == 1  # said once


def test_retry_policy_backoff_doubles_to_its_cap():
    p = RetryPolicy(retries=5, backoff_s=0.5, max_backoff_s=3.0)
    assert [p.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


# ------------------------------------------------------------------ end to end: 2 gloo ranks
def test_two_ranks_training_from_http_matches_the_folder_bit_for_bit_through_faults(shared_dir, tmp_path):
    import json
    import subprocess

    from conftest import REPO, SMOKE
    from dist_gan.data.pack import pack

    shards = tmp_path / "celeba64"
    pack(shared_dir / "data" / "celeba-10k.zip", shards, resolution=64, shard_size=40, limit=160, progress=False, workers=1)
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", "0", str(REPO / "dist_gan" / "train.py"), *SMOKE,
              "model.resolution=64", "loader.workers=1", "train.kimg=0.32", "loader.retries=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}

    def train(data: str, run: Path) -> dict:
        proc = subprocess.run([*launch, f"data={data}", f"run_dir={run}"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((run / "final.json").read_text())

    local = train(str(shards), tmp_path / "local")
    with LoopbackServer(tmp_path) as srv:
        for name in ("shard-000000.tar", "shard-000002.tar"):  # broken reads that resume where they broke
            srv.fail(f"celeba64/{name}", "reset", "truncate")
        srv.fail("celeba64/shard-000003.tar", "503")
        remote = train(srv.url + "celeba64/", tmp_path / "http")
    assert local["world_size"] == remote["world_size"] == 2
    assert remote["weight_checksums"] == local["weight_checksums"] and remote["ranks_in_sync"]
    assert sum(r["shard_retries"] for r in remote["ranks"]) == 5 and all(r["bad_samples"] == 0 for r in remote["ranks"])
    assert sum(r["fetched_bytes"] for r in remote["ranks"]) > 0
    last = json.loads((tmp_path / "http" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["shard_retries"] == 5 and last["shards_failed"] == 0


def test_two_ranks_through_a_faulty_server_keep_step_parity_and_count_every_fault(shared_dir, tmp_path):
    """1 shard request in 5 reset, one shard truncated, one never served: every fault is in the counts, exactly."""
    import json
    import subprocess

    from conftest import REPO, SMOKE
    from dist_gan.data.pack import pack

    shards = tmp_path / "faces"
    pack(shared_dir / "data" / "celeba-10k.zip", shards, resolution=32, shard_size=20, limit=160, progress=False, workers=1)
    retries = 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    with LoopbackServer(tmp_path, drop_every=5) as srv:
        srv.fail("faces/shard-000003.tar", "truncate")
        srv.fail("faces/shard-000005.tar", *["503"] * 1000)  # down for good: skipped after its retries, each time drawn
        proc = subprocess.run(
            ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--main_process_port", "0", str(REPO / "dist_gan" / "train.py"), *SMOKE,
             "loader.workers=0", "train.kimg=0.32", f"loader.retries={retries}", f"data={srv.url}faces/",
             f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dead_requests, served = srv.count("faces/shard-000005.tar"), srv.faults_served
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"] and [r["nimg"] for r in final["ranks"]] == [320, 320]
    skipped = sum(r["bad_samples"] for r in final["ranks"])  # one per failed open of the dead shard
    retried = sum(r["shard_retries"] for r in final["ranks"])
    assert skipped >= 1 and dead_requests == skipped * (retries + 1)
    assert retried + skipped == served > skipped * (retries + 1)  # the resets and the truncation were retried too
    assert all(r["failed_shards"] in ([], [f"{srv.url}faces/shard-000005.tar"]) for r in final["ranks"])
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["bad_samples"], last["shard_retries"]) == (skipped, retried)

