import argparse
import dataclasses
import os
import subprocess
import sys

import pytest

from raftfast.config import (NODE_ID_MAX, ArgumentParser, Config, ConfigError, add_node_arguments,
                             parse_node_config, tunable_argv)
from tests.support import REPO

BASE = ["--id", "1", "--data-dir", "/tmp/d1", "--listen", "unix:///tmp/d1/raft.sock",
        "--client", "tcp://127.0.0.1:7001"]


def cfg(**kw):
    args = dict(node_id=1, data_dir="/tmp/d", listen="tcp://127.0.0.1:7101",
                client="tcp://127.0.0.1:7001")
    args.update(kw)
    return Config(**args)


def test_defaults_match_the_reference():
    c = cfg()
    assert c.advertise_client is None and c.client_advertised() == "tcp://127.0.0.1:7001"
    assert c.peers == {} and c.join is False
    assert c.cluster_id == "raftfast" and c.fsync == "always"
    assert (c.heartbeat_interval_ms, c.election_timeout_ms) == (100, 1000)
    assert (c.max_batch_entries, c.max_batch_bytes, c.batch_linger_us) == (1024, 1 << 20, 0)
    assert (c.max_inflight, c.max_inflight_bytes) == (64, 8 << 20)
    assert c.read_mode == "readindex"
    assert (c.snapshot_entries, c.snapshot_trailing) == (1_000_000, 100_000)  # measured
    assert c.log_level == "info" and c.max_frame_bytes == 64 << 20
    assert c.validate() is c


def test_parse_full_command_line():
    c = parse_node_config(BASE + [
        "--peer", "2=unix:///tmp/d2/raft.sock", "--peer", "3=tcp://[::1]:7103",
        "--advertise-client", "tcp://10.0.0.1:7001", "--cluster-id", "prod",
        "--fsync", "never", "--heartbeat-interval", "50", "--election-timeout", "500",
        "--max-batch-entries", "10", "--max-batch-bytes", "4096", "--batch-linger-us", "200",
        "--max-inflight", "8", "--max-inflight-bytes", "65536", "--read-mode", "lease",
        "--snapshot-entries", "100", "--snapshot-trailing", "5", "--log-level", "debug",
        "--max-frame-bytes", "1048576", "--join"])
    assert c == Config(
        node_id=1, data_dir="/tmp/d1", listen="unix:///tmp/d1/raft.sock",
        client="tcp://127.0.0.1:7001", advertise_client="tcp://10.0.0.1:7001",
        peers={2: "unix:///tmp/d2/raft.sock", 3: "tcp://[::1]:7103"}, join=True,
        cluster_id="prod", fsync="never", heartbeat_interval_ms=50, election_timeout_ms=500,
        max_batch_entries=10, max_batch_bytes=4096, batch_linger_us=200, max_inflight=8,
        max_inflight_bytes=65536, read_mode="lease", snapshot_entries=100,
        snapshot_trailing=5, log_level="debug", max_frame_bytes=1048576)


def test_omitted_flags_take_dataclass_defaults():
    c = parse_node_config(BASE)
    defaults = cfg()
    for f in dataclasses.fields(Config):
        if f.name not in ("node_id", "data_dir", "listen", "client"):
            assert getattr(c, f.name) == getattr(defaults, f.name), f.name


@pytest.mark.parametrize("extra,fragment", [
    (["--id", "0"], "node ids are from 1"),
    (["--id", str(NODE_ID_MAX + 1)], "node ids are from 1"),
    (["--id", "x"], "not an integer node id"),
    (["--listen", "127.0.0.1:7101"], "bad address"),
    (["--client", "tcp://h"], "missing :PORT"),
    (["--peer", "2"], "is not ID=URL"),
    (["--peer", "=tcp://h:1"], "is not ID=URL"),
    (["--peer", "two=tcp://h:1"], "not an integer node id"),
    (["--peer", "2=tcp://h"], "missing :PORT"),
    (["--peer", "2=tcp://h:1", "--peer", "2=tcp://h:2"], "given twice"),
    (["--peer", "1=tcp://h:1"], "own id"),
    (["--peer", "2=tcp://h:1", "--peer", "3=tcp://h:1"], "same address as peer 2"),
    (["--peer", "2=unix:///tmp/d1/raft.sock"], "own --listen"),
    (["--fsync", "sometimes"], "invalid choice"),
    (["--read-mode", "stale"], "invalid choice"),
    (["--heartbeat-interval", "0"], "must be >= 1"),
    (["--heartbeat-interval", "1000"], "must be less than --election-timeout"),
    (["--max-batch-entries", "-1"], "must be >= 1"),
    (["--max-frame-bytes", "1024"], "a full batch must fit"),
    (["--client", "tcp://0.0.0.0:7001"], "give --advertise-client"),
    (["--client", "tcp://0.0.0.0:7001", "--advertise-client", "tcp://[::]:7001"],
     "not a wildcard"),
    (["--cluster-id", ""], "must not be empty"),
    (["--cluster-id", "a\nb"], "printable"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_usage_exits_2_with_one_line(extra, fragment, capsys):
    with pytest.raises(SystemExit) as ei:
        parse_node_config(BASE + extra)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert fragment in err


def test_missing_required_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as ei:
        parse_node_config(["--id", "1"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "required" in err and "--data-dir" in err and err.count("\n") == 1


def test_wildcard_client_with_advertise_is_fine():
    c = parse_node_config(BASE[:-1] + ["tcp://0.0.0.0:7001",
                                       "--advertise-client", "tcp://10.1.1.1:7001"])
    assert c.client_advertised() == "tcp://10.1.1.1:7001"


@pytest.mark.parametrize("kw,fragment", [
    (dict(node_id=0), "--id"),
    (dict(node_id=True), "--id"),
    (dict(peers={-3: "tcp://h:1"}), "--peer -3"),
    (dict(data_dir=""), "--data-dir"),
    (dict(listen="tcp://h:99999"), "out of range"),
    (dict(election_timeout_ms=100), "less than --election-timeout"),
    (dict(snapshot_trailing=-1), "--snapshot-trailing"),
    (dict(log_level="trace"), "--log-level"),
    (dict(cluster_id="x" * 256), "longer than 255 bytes"),
])
def test_validate_programmatic_config(kw, fragment):
    with pytest.raises(ConfigError, match="^.*" + fragment.replace("-", "\\-")) as ei:
        cfg(**kw).validate()
    assert "\n" not in str(ei.value)


def test_cluster_parser_has_tunables_only_and_passes_given_ones_through():
    p = add_node_arguments(ArgumentParser(prog="cluster"), cluster=True)
    for flag in ("--id", "--listen", "--client", "--peer", "--data-dir", "--join"):
        with pytest.raises(SystemExit):
            p.parse_args([flag, "1"])
    ns = p.parse_args(["--fsync", "never", "--election-timeout", "300", "--log-level", "debug"])
    assert tunable_argv(ns) == ["--fsync", "never", "--election-timeout", "300",
                                "--log-level", "debug"]
    assert tunable_argv(p.parse_args([])) == []
    # What the launcher passes on, a node parses back to the same settings.
    c = parse_node_config(BASE + tunable_argv(ns))
    assert (c.fsync, c.election_timeout_ms, c.log_level) == ("never", 300, "debug")


def test_help_shows_defaults():
    p = add_node_arguments(argparse.ArgumentParser(prog="n"))
    text = " ".join(p.format_help().split())  # argparse wraps lines
    assert "(default: 100)" in text and "(default: readindex)" in text


def test_bad_address_on_a_real_command_line_exits_2():
    code = ("from raftfast.config import parse_node_config; "
            "parse_node_config(['--id','1','--data-dir','d','--listen','nope',"
            "'--client','tcp://127.0.0.1:1'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "bad address 'nope'" in r.stderr


@pytest.mark.parametrize("kw, fragment", [
    (dict(client="tls://127.0.0.1:7001"), "TLS needs --tls-cert-file, --tls-key-file"),
    (dict(client="tls://127.0.0.1:7001", tls_cert_file="c", tls_key_file="k"),
     "--tls-ca-cert-file (or --tls-auth-clients no)"),
    (dict(listen="tls://127.0.0.1:7101"), "TLS between peers needs --peer-tls-cert-file"),
    (dict(peer_tls_cert_file="c"), "also needs --peer-tls-key-file, --peer-tls-ca-cert-file"),
    (dict(peer_tls_cert_file="c", peer_tls_key_file="k", peer_tls_ca_cert_file="a"),
     "every peer address is tls://"),
    (dict(listen="tcp://10.0.0.1:7101"), "or --insecure-peers"),
    (dict(peers={2: "tcp://db2.example:7101"}), "--peer 2 tcp://db2.example:7101: peers over"),
    (dict(tls_auth_clients="maybe"), "--tls-auth-clients"),
])
def test_tls_settings_that_cannot_work_are_refused(kw, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        cfg(**kw).validate()
    assert fragment in str(e.value)


def test_tls_settings_that_work():
    cfg(client="tls://127.0.0.1:7001", tls_cert_file="c", tls_key_file="k",
        tls_auth_clients="no").validate()
    cfg(listen="tls://10.0.0.1:7101", peers={2: "tls://10.0.0.2:7101"}, peer_tls_cert_file="c",
        peer_tls_key_file="k", peer_tls_ca_cert_file="a").validate()
    cfg(listen="tcp://10.0.0.1:7101", insecure_peers=True).validate()
    cfg(listen="tcp://localhost:7101", peers={2: "tcp://[::1]:7102"}).validate()
