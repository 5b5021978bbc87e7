# Admission control: who may connect, and who gives way when srsd is full (Postfix's anvil).
""":mod:`.rule` is the pure admission table (shares per user, evictions),
:mod:`.owners` learns the local uid owning a peer socket (SO_PEERCRED, sock_diag), and
:mod:`.gatekeeper` puts the rule in front of the serving loop (counts, logs).
"""
