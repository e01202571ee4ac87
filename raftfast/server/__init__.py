"""The RESP front door: client connections, the command table, batching
commands into proposals and reads, ordered replies, INFO."""
