"""The training API's worker side: what a worker holding a client's training model computes."""
