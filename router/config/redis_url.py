"""Redis URLs, plain and cluster (``redis+cluster://h1:p1,h2:p2``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A parsed ``capture.redis`` URL (see :func:`parse_redis_url`)."""

    url: str  # as written
    scheme: str  # redis | rediss | unix (without "+cluster")
    cluster: bool
    seeds: tuple[tuple[str, int], ...]  # every host:port of the URL (one unless a cluster)

    def node_url(self, index: int = 0) -> str:
        """The URL with only seed ``index`` as its host, for redis-py's ``from_url`` (which
        takes one host): same scheme (without ``+cluster``), credentials, path and query."""
        if self.scheme == "unix":
            return self.url
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        host, port = self.seeds[index]
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        netloc = f"{userinfo}@{hostport}" if userinfo else hostport
        return urlunsplit(parts._replace(scheme=self.scheme, netloc=netloc))


def parse_redis_url(url: str) -> RedisURL:
    """Parse a Redis URL: ``redis://[user:password@]host[:port][/db][?options]``,
    ``rediss://`` (TLS), ``unix:///path``, or a cluster ``redis+cluster://`` /
    ``rediss+cluster://`` with one or several seed nodes separated by commas
    (``redis+cluster://user:pw@h1:7000,h2:7000,[::1]:7001``; a port defaults to 6379).

    The one parser of Redis URLs: the config, the capture writer and every reader (analyzer,
    export, controller) go through it. Raises ``ValueError`` with a one-line reason."""
    parts = urlsplit(url)
    raw_scheme = parts.scheme.lower()
    if raw_scheme not in REDIS_SCHEMES:
        raise ValueError(f"must be 'embedded' or a redis://, rediss://, unix://, "
                         f"redis+cluster:// URL (got {url!r})")  # fmt: skip
    cluster = raw_scheme.endswith("+cluster")
    scheme = raw_scheme.removesuffix("+cluster")
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// URL needs a socket path (got {url!r})")
        return RedisURL(url, scheme, False, ())
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ValueError(f"no host in {url!r}")
    seeds = tuple(_parse_seed(h, url) for h in hosts.split(","))
    if len(seeds) > 1 and not cluster:
        raise ValueError(f"several hosts need a cluster URL ({scheme}+cluster://...), "
                         f"got {url!r}")  # fmt: skip
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed node is listed twice in {url!r}")
    return RedisURL(url, scheme, cluster, seeds)


def _parse_seed(text: str, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [ipv6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {text!r} in {url!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host or any(ch in host for ch in " /?#[]"):
        raise ValueError(f"bad host {text!r} in {url!r}")
    if not port_text:
        return host, 6379
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r} of {url!r}: expected 1-65535")
    return host, int(port_text)
