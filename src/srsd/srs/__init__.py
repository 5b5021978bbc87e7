# Pure SRS: address bytes, the SRS0/SRS1 codec, the rewrite policy. No I/O, no trio.
"""What srsd answers, decided without I/O: :mod:`.address` (mail address bytes),
:mod:`.codec` (the HMAC-signed SRS0/SRS1 codec) and :mod:`.policy` (which senders are
rewritten, which recipients decoded, and why). Nothing here imports trio or a layer above.
"""
