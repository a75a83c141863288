"""What any engine needs from /proc: namespaces to enter, processes that own sockets."""
