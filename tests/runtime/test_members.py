"""Which address each peer is dialed at as the membership changes
(PeerAddresses, no processes): members at the configuration's addresses,
--peer flags first, ids no longer members forgotten, the leader kept."""
from raftfast.runtime.members import PeerAddresses
from tests.support.memnet import AddressBook


class _Core:
    def __init__(self, voters, learners, urls, leader_id=0):
        self.id = 1
        self.voters, self.learners, self.urls = set(voters), set(learners), urls
        self.leader_id = leader_id
        self.conf_version = 3


def _addresses(peers, addresses):
    return PeerAddresses(AddressBook(addresses), peers)


def test_members_are_dialed_as_the_configuration_says_and_peer_flags_win():
    core = _Core({1, 2, 3}, {4}, {2: "tcp://127.0.0.1:9002", 3: "tcp://127.0.0.1:9003",
                                 4: "tcp://127.0.0.1:9004"})
    a = _addresses({3: "unix:///flag3.sock"}, {3: "unix:///flag3.sock"})
    a.refresh(core)
    assert a.transport.addresses == {2: "tcp://127.0.0.1:9002", 3: "unix:///flag3.sock",
                                     4: "tcp://127.0.0.1:9004"}
    assert (a.conf_version, a.leader_id) == (3, 0)
    # Every other member is dialed at once, before anything is sent to it.
    assert a.transport.dialed_ahead == {2, 3, 4}
    assert not a.stale(core)
    core.conf_version = 4
    assert a.stale(core)


def test_addresses_of_ids_no_longer_members_are_forgotten_but_the_leader_is_kept():
    """Node 5, removed, is forgotten; node 6 is no member either but leads
    (a leader removing itself leads until that change commits); node 7 is
    --peer'd and may not be a member yet."""
    core = _Core({1, 2}, (), {2: "tcp://127.0.0.1:9002"}, leader_id=6)
    a = _addresses({7: "tcp://127.0.0.1:9007"},
                   {5: "tcp://127.0.0.1:9005", 6: "tcp://127.0.0.1:9006",
                    7: "tcp://127.0.0.1:9007"})
    a.refresh(core)
    assert a.transport.addresses == {2: "tcp://127.0.0.1:9002", 6: "tcp://127.0.0.1:9006",
                                     7: "tcp://127.0.0.1:9007"}
    core.leader_id = 2
    a.refresh(core)
    assert 6 not in a.transport.addresses


def test_a_bad_address_in_the_configuration_does_not_stop_the_node():
    from raftfast.address import parse_address

    class Strict(AddressBook):
        def set_address(self, node_id, url):
            if url is not None:
                parse_address(url)
            super().set_address(node_id, url)

    core = _Core({1, 2, 3}, (), {2: "ftp://nowhere", 3: "tcp://127.0.0.1:9003"})
    a = _addresses({}, {})
    a.transport = Strict({})
    a.refresh(core)
    assert a.transport.addresses == {3: "tcp://127.0.0.1:9003"}
