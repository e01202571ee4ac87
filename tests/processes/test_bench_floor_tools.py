"""The measuring scripts of bench/ that the docs' floors and instruction
counts come from: what each one measures is what it says."""
import os

from bench import instructions_per_set, python_replication_floor, python_server_floor
from raftfast._kv import KVStore
from tests.support.client_transport import FakeClientTransport


def test_the_instruction_count_runs_sets_through_three_drivers_to_their_answers():
    answers = instructions_per_set.run_sets(5)
    assert len(answers) == instructions_per_set.WARM_UP + 5


def test_the_python_floor_server_stores_each_set_and_answers_a_read_with_one_write():
    store = {}
    proto = python_server_floor._SetServer(store)
    transport = FakeClientTransport()
    proto.connection_made(transport)
    proto.data_received(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$1\r\nb")
    proto.data_received(b"\r\n$2\r\n22\r\n")
    assert store == {b"a": b"1", b"b": b"22"}
    assert transport.out == [b"+OK\r\n", b"+OK\r\n"]  # one write per read that ended a request


SET_A = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n"
SET_B = b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$2\r\n22\r\n"


class _Soon:
    """call_soon, run when told."""

    def __init__(self):
        self.due = []

    def call_soon(self, fn, *args):
        self.due.append((fn, args))

    def run(self):
        due, self.due = self.due, []
        for fn, args in due:
            fn(*args)


def test_the_replication_floor_leader_answers_once_on_its_disk_and_one_followers(tmp_path):
    loop = _Soon()
    fd = os.open(tmp_path / "leader.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    leader = python_replication_floor.Leader(loop, fd, KVStore())
    followers = [FakeClientTransport(), FakeClientTransport()]
    leader.followers, leader.acked = followers, [0, 0]
    clients = [FakeClientTransport(), FakeClientTransport()]
    for client, data in zip(clients, (SET_A, SET_B)):
        proto = python_replication_floor.ClientProtocol(leader)
        proto.connection_made(client)
        proto.data_received(data)
    loop.run()  # one flush for both reads of the iteration
    frame = followers[0].out
    assert frame == followers[1].out and len(frame) == 1
    seq, size = python_replication_floor.FRAME.unpack_from(frame[0])
    assert seq == 1 and size == len(frame[0]) - python_replication_floor.FRAME.size
    assert os.path.getsize(tmp_path / "leader.log") == size  # written (and synced) by the leader
    assert clients[0].out == [] and leader.store.get(b"a") is None  # no follower has it yet
    ack = python_replication_floor.AckProtocol(leader, 1)
    ack.data_received(python_replication_floor.ACK.pack(1)[:3])
    assert clients[0].out == []  # half an acknowledgement is none
    ack.data_received(python_replication_floor.ACK.pack(1)[3:])
    assert clients[0].out == [b"+OK\r\n"] and clients[1].out == [b"+OK\r\n"]
    assert leader.store.get(b"a") == b"1" and leader.store.get(b"b") == b"22"
    os.close(fd)


def test_the_replication_floor_follower_syncs_applies_and_acknowledges_whole_frames(tmp_path):
    leader_side = _Soon()
    lfd = os.open(tmp_path / "l.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    leader = python_replication_floor.Leader(leader_side, lfd, KVStore())
    wire = FakeClientTransport()
    leader.followers, leader.acked = [wire], [0]
    for data in (SET_A, SET_B):  # two iterations: two frames
        proto = python_replication_floor.ClientProtocol(leader)
        proto.connection_made(FakeClientTransport())
        proto.data_received(data)
        leader_side.run()
    stream = b"".join(wire.out)
    fd = os.open(tmp_path / "f.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    follower = python_replication_floor.FollowerProtocol(fd, KVStore())
    acks = FakeClientTransport()
    follower.connection_made(acks)
    cut = len(wire.out[0]) + 5  # the first frame and part of the second
    follower.data_received(stream[:cut])
    assert acks.out == [python_replication_floor.ACK.pack(1)]
    assert follower.store.get(b"a") == b"1" and follower.store.get(b"b") is None
    follower.data_received(stream[cut:])
    assert acks.out[-1] == python_replication_floor.ACK.pack(2)
    assert follower.store.get(b"b") == b"22"
    assert os.path.getsize(tmp_path / "f.log") == os.path.getsize(tmp_path / "l.log")
    os.close(fd)
    os.close(lfd)
