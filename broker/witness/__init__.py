"""A transparency-log witness (issue 16, part 4): ``sgb witness``, C2SP ``tlog-witness`` over HTTP.

It cosigns a log's checkpoint only after checking, with an RFC 9162 consistency proof, that it
extends the last checkpoint it cosigned for that log, and it never cosigns two different roots
for one size: seeing them is a fork, refused and alarmed. :mod:`~broker.witness.keys` holds its
cosigning key and the logs it witnesses, :mod:`~broker.witness.state` its SQLite record,
:mod:`~broker.witness.protocol` the request and its checks, :mod:`~broker.witness.service` the
HTTP service, :mod:`~broker.witness.client` what a log calls (docs/transparency.md "Witnesses").
"""
