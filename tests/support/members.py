"""Growing a harness cluster by a node that is not one of its founders."""
from tests.support.harness import NodeProc, free_ports


def add_node_slot(cluster, node_id, extra=("--join",)):
    """Room in `cluster` for one more node (not started): its ports, its
    place among the ids (so stop() ends it too), and --peer flags for
    every node the cluster knows.  Nodes already running are not told of
    it: they dial it by the address its membership change names."""
    client_port, peer_port = free_ports(2)
    cluster.ids.append(node_id)
    cluster.client_ports[node_id] = client_port
    cluster.peer_ports[node_id] = peer_port
    node = cluster.nodes[node_id] = NodeProc(cluster, node_id, list(extra))
    return node
