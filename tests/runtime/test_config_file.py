"""--config FILE: node flags from TOML (raftfast/config_file.py)."""
import pytest

from raftfast.config import parse_node_config

BASE = '''
id = 3
data-dir = "/tmp/d3"
listen = "unix:///tmp/n3.sock"
client = "tcp://127.0.0.1:7003"
'''


def config(tmp_path, text, *argv):
    path = tmp_path / "node.toml"
    path.write_text(text)
    return parse_node_config(["--config", str(path), *argv])


def usage_error(capsys, tmp_path, text, *argv):
    with pytest.raises(SystemExit) as e:
        config(tmp_path, text, *argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "node.toml") in err
    return err


def test_every_kind_of_flag_from_the_file(tmp_path):
    cfg = config(tmp_path, BASE + '''
heartbeat-interval = 50
maxmemory = "64mb"
fsync = "never"
join = true
insecure-peers = false
[peer]
1 = "unix:///tmp/n1.sock"
2 = "unix:///tmp/n2.sock"
''')
    assert (cfg.node_id, cfg.data_dir, cfg.client) == (3, "/tmp/d3", "tcp://127.0.0.1:7003")
    assert cfg.heartbeat_interval_ms == 50 and cfg.maxmemory == 64 << 20
    assert cfg.fsync == "never" and cfg.join is True and cfg.insecure_peers is False
    assert cfg.peers == {1: "unix:///tmp/n1.sock", 2: "unix:///tmp/n2.sock"}


def test_the_command_line_wins_and_a_repeated_flag_per_key(tmp_path):
    cfg = config(tmp_path, BASE + '''
heartbeat-interval = 50
[peer]
1 = "unix:///tmp/n1.sock"
2 = "unix:///tmp/n2.sock"
''', "--heartbeat-interval", "70", "--peer", "2=unix:///tmp/elsewhere.sock", "--id", "4")
    assert cfg.heartbeat_interval_ms == 70 and cfg.node_id == 4
    assert cfg.peers == {1: "unix:///tmp/n1.sock", 2: "unix:///tmp/elsewhere.sock"}


def test_without_a_file_nothing_changes():
    cfg = parse_node_config(["--id", "1", "--data-dir", "d", "--listen", "unix:///tmp/a.sock",
                             "--client", "tcp://127.0.0.1:7001"])
    assert cfg.heartbeat_interval_ms == 100


@pytest.mark.parametrize("text,says", [
    ("bogus = 1", "'bogus' is not a flag of this command"),
    ("version = true", "'version' is not a flag of this command"),
    ('config = "other.toml"', "'config': a config file cannot name another"),
    ('heartbeat-interval = "often"', "heartbeat-interval = 'often'"),
    ("heartbeat-interval = true", "heartbeat-interval takes one value"),
    ('fsync = "sometimes"', "fsync = 'sometimes': not one of always, never"),
    ('join = "yes"', "join takes true or false"),
    ('peer = "1=unix:///tmp/a.sock"', "peer is given as a table"),
    ('[peer]\n1 = true', "peer.1: a string or a number"),
    ('[peer]\nx = "unix:///tmp/a.sock"', "peer.x = 'x=unix:///tmp/a.sock'"),
    ("heartbeat-interval = [1, 2]", "heartbeat-interval takes one value"),
    ("id = ", "not TOML"),
])
def test_a_bad_file_is_one_line_naming_file_and_key(capsys, tmp_path, text, says):
    assert says in usage_error(capsys, tmp_path, BASE + text)


def test_a_missing_file(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        parse_node_config(["--config", str(tmp_path / "none.toml")])
    assert e.value.code == 2 and "cannot read it" in capsys.readouterr().err


def test_the_cluster_takes_its_own_flags_and_the_node_tunables_from_a_file(tmp_path):
    from raftfast.config_file import expand_config
    from raftfast.launcher.cli import build_parser
    path = tmp_path / "cluster.toml"
    path.write_text('nodes = 5\ntransport = "tcp"\nmetrics = true\nheartbeat-interval = 40\n')
    parser = build_parser()
    ns = parser.parse_args(expand_config(parser, ["--config", str(path), "--nodes", "3"]))
    assert (ns.nodes, ns.transport, ns.metrics, ns.heartbeat_interval_ms) == (3, "tcp", True, 40)
