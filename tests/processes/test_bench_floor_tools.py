"""The two measuring scripts of bench/ that the docs' floors and
instruction counts come from: what each one measures is what it says."""
from bench import instructions_per_set, python_server_floor
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
