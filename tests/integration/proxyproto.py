"""A strict PROXY protocol parser for the integration tests (haproxy.org's proxy-protocol.txt).

Written independently of ferry's core/proxy_protocol.cpp so that tests check ferry's headers
against a second reading of the specification, byte for byte. Python 3 standard library only.

parse(data) looks at the start of `data`:
  - returns None while `data` is a valid prefix of a header (read more bytes),
  - raises ProxyProtocolError when the bytes cannot be a valid header,
  - else returns a dict describing the one complete header at the start of `data`:

    version      1 or 2
    length       header length in bytes (bytes after it are not part of the header)
    command      "PROXY" or "LOCAL" (v1 is always "PROXY")
    family       v1: "TCP4", "TCP6", "UNKNOWN";
                 v2: "UNSPEC", "TCP4", "UDP4", "TCP6", "UDP6", "UNIX_STREAM", "UNIX_DGRAM"
    src_addr, dst_addr   text ("192.0.2.1", "2001:db8::1", a unix path) or None
    src_port, dst_port   int or None
    tlvs         [(type, value bytes)] in wire order, every v2 TLV (empty for v1)
    alpn, authority      str from PP2_TYPE_ALPN / PP2_TYPE_AUTHORITY, or None if absent
    crc32c       the verified PP2_TYPE_CRC32C value, or None if absent
    unique_id    bytes from PP2_TYPE_UNIQUE_ID, or None
    ssl          None, or {"client": flags int, "verify": int, "sub": {subtype: bytes},
                 "version", "cn", "cipher", "sig_alg", "key_alg": str or None}

recv_header(sock, timeout) reads exactly one header from a socket and returns
(parsed dict, header bytes), leaving whatever follows the header unread.
"""

import re
import socket
import struct
import time

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107  # including CRLF

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

# v2 family byte -> (name, address block length)
_FAMILIES = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX_STREAM", 216),
    0x32: ("UNIX_DGRAM", 216),
}

_SSL_SUBTYPE_NAMES = {
    PP2_SUBTYPE_SSL_VERSION: "version",
    PP2_SUBTYPE_SSL_CN: "cn",
    PP2_SUBTYPE_SSL_CIPHER: "cipher",
    PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
    PP2_SUBTYPE_SSL_KEY_ALG: "key_alg",
}

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_IPV4 = re.compile(rb"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")
_IPV6_CHARS = re.compile(rb"[0-9A-Fa-f:.]{2,45}")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), bitwise: slow and obviously right."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def parse(data):
    data = bytes(data)
    if not data:
        return None
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == SIGNATURE[:1]:
        return _parse_v2(data)
    raise ProxyProtocolError("not a PROXY protocol header (first byte 0x%02x)" % data[0])


# ---- v1 ------------------------------------------------------------------------------------


def _parse_v1(data):
    window = data[:V1_MAX_LENGTH]
    end = window.find(b"\r\n")
    if end < 0:
        if not b"PROXY ".startswith(window[:6]):
            raise ProxyProtocolError("v1: does not start with 'PROXY '")
        if b"\n" in window:
            raise ProxyProtocolError("v1: LF without CR")
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError("v1: no CRLF within 107 bytes")
        return None
    line = window[:end]
    if b"\n" in line or b"\r" in line:
        raise ProxyProtocolError("v1: stray CR or LF")
    result = _result(1, end + 2, "PROXY")

    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        result["family"] = "UNKNOWN"
        return result

    parts = line.split(b" ")
    if len(parts) != 6 or parts[0] != b"PROXY":
        raise ProxyProtocolError("v1: expected 'PROXY proto src dst sport dport': %r" % line)
    _, proto, src, dst, sport, dport = parts
    if proto == b"TCP4":
        family = socket.AF_INET
    elif proto == b"TCP6":
        family = socket.AF_INET6
    else:
        raise ProxyProtocolError("v1: unknown protocol %r" % proto)
    result["family"] = proto.decode()
    result["src_addr"] = _v1_address(family, src)
    result["dst_addr"] = _v1_address(family, dst)
    result["src_port"] = _v1_port(sport)
    result["dst_port"] = _v1_port(dport)
    return result


def _v1_address(family, text):
    pattern = _IPV4 if family == socket.AF_INET else _IPV6_CHARS
    if not pattern.fullmatch(text):
        raise ProxyProtocolError("v1: bad address %r" % text)
    try:
        packed = socket.inet_pton(family, text.decode("ascii"))
    except (OSError, UnicodeDecodeError):
        raise ProxyProtocolError("v1: bad address %r" % text) from None
    return socket.inet_ntop(family, packed)


def _v1_port(text):
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyProtocolError("v1: bad port %r" % text)
    return int(text)


# ---- v2 ------------------------------------------------------------------------------------


def _parse_v2(data):
    n = min(len(data), len(SIGNATURE))
    if data[:n] != SIGNATURE[:n]:
        raise ProxyProtocolError("v2: bad signature")
    if len(data) > 12:
        ver_cmd = data[12]
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError("v2: version %d" % (ver_cmd >> 4))
        if ver_cmd & 0x0F not in (0, 1):
            raise ProxyProtocolError("v2: command %d" % (ver_cmd & 0x0F))
    if len(data) > 13 and data[13] not in _FAMILIES:
        raise ProxyProtocolError("v2: family byte 0x%02x" % data[13])
    if len(data) < 16:
        return None

    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    family, block = _FAMILIES[fam]
    if length < block:
        raise ProxyProtocolError("v2: length %d < the %s address block" % (length, family))
    total = 16 + length
    if len(data) < total:
        return None
    header = data[:total]

    result = _result(2, total, "LOCAL" if ver_cmd & 0x0F == 0 else "PROXY")
    result["family"] = family
    addr = header[16 : 16 + block]
    if family in ("TCP4", "UDP4"):
        result["src_addr"] = socket.inet_ntop(socket.AF_INET, addr[0:4])
        result["dst_addr"] = socket.inet_ntop(socket.AF_INET, addr[4:8])
        result["src_port"], result["dst_port"] = struct.unpack("!HH", addr[8:12])
    elif family in ("TCP6", "UDP6"):
        result["src_addr"] = socket.inet_ntop(socket.AF_INET6, addr[0:16])
        result["dst_addr"] = socket.inet_ntop(socket.AF_INET6, addr[16:32])
        result["src_port"], result["dst_port"] = struct.unpack("!HH", addr[32:36])
    elif family.startswith("UNIX"):
        result["src_addr"] = addr[0:108].split(b"\0", 1)[0].decode("latin-1")
        result["dst_addr"] = addr[108:216].split(b"\0", 1)[0].decode("latin-1")

    tlvs = _tlv_offsets(header, 16 + block, total)
    result["tlvs"] = [(tlv_type, value) for _, tlv_type, value in tlvs]
    seen = set()
    for offset, tlv_type, value in tlvs:
        if tlv_type in seen and tlv_type in (
            PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL
        ):
            raise ProxyProtocolError("v2: repeated TLV 0x%02x" % tlv_type)
        seen.add(tlv_type)
        if tlv_type == PP2_TYPE_ALPN:
            result["alpn"] = value.decode("latin-1")  # protocol ids are opaque bytes
        elif tlv_type == PP2_TYPE_AUTHORITY:
            result["authority"] = _ascii(value, "AUTHORITY")
        elif tlv_type == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise ProxyProtocolError("v2: CRC32C TLV of %d bytes" % len(value))
            zeroed = header[: offset + 3] + b"\0\0\0\0" + header[offset + 7 :]
            (expected,) = struct.unpack("!I", value)
            if crc32c(zeroed) != expected:
                raise ProxyProtocolError("v2: CRC32C mismatch")
            result["crc32c"] = expected
        elif tlv_type == PP2_TYPE_UNIQUE_ID:
            if len(value) > 128:
                raise ProxyProtocolError("v2: UNIQUE_ID longer than 128 bytes")
            result["unique_id"] = value
        elif tlv_type == PP2_TYPE_SSL:
            result["ssl"] = _parse_ssl(value)
    return result


def _tlv_offsets(buf, start, end):
    """(offset, type, value) for each TLV in buf[start:end]; they must tile it exactly."""
    out = []
    pos = start
    while pos < end:
        if end - pos < 3:
            raise ProxyProtocolError("v2: %d stray bytes after the last TLV" % (end - pos))
        tlv_type, n = struct.unpack("!BH", buf[pos : pos + 3])
        if pos + 3 + n > end:
            raise ProxyProtocolError("v2: TLV 0x%02x of %d bytes overruns" % (tlv_type, n))
        out.append((pos, tlv_type, buf[pos + 3 : pos + 3 + n]))
        pos += 3 + n
    return out


def _parse_ssl(value):
    if len(value) < 5:
        raise ProxyProtocolError("v2: SSL TLV of %d bytes (at least 5)" % len(value))
    client, verify = struct.unpack("!BI", value[:5])
    ssl = {"client": client, "verify": verify, "sub": {}}
    for name in _SSL_SUBTYPE_NAMES.values():
        ssl[name] = None
    for _, sub_type, sub_value in _tlv_offsets(value, 5, len(value)):
        if sub_type in ssl["sub"]:
            raise ProxyProtocolError("v2: repeated SSL sub-TLV 0x%02x" % sub_type)
        ssl["sub"][sub_type] = sub_value
        if sub_type in _SSL_SUBTYPE_NAMES:
            ssl[_SSL_SUBTYPE_NAMES[sub_type]] = _ascii(sub_value, "SSL sub-TLV")
    return ssl


def _ascii(value, what):
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v2: %s is not ASCII: %r" % (what, value)) from None


def _result(version, length, command):
    return {
        "version": version,
        "length": length,
        "command": command,
        "family": None,
        "src_addr": None,
        "src_port": None,
        "dst_addr": None,
        "dst_port": None,
        "tlvs": [],
        "alpn": None,
        "authority": None,
        "crc32c": None,
        "unique_id": None,
        "ssl": None,
    }


# ---- sockets -------------------------------------------------------------------------------


def recv_header(sock, timeout=5.0):
    """Read exactly one PROXY header from `sock`: (parsed dict, header bytes).

    Peeks until a complete header is buffered, then receives exactly its length, so the bytes
    after it (e.g. a TLS ClientHello) stay in the socket. Raises ProxyProtocolError for an invalid
    header, ConnectionError on EOF first and TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    saved = sock.gettimeout()
    try:
        seen = -1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete PROXY header within %.1f s" % timeout)
            sock.settimeout(remaining)
            data = sock.recv(16 + 65535, socket.MSG_PEEK)
            if not data:
                raise ConnectionError("EOF before a complete PROXY header")
            parsed = parse(data)
            if parsed is not None:
                break
            if len(data) == seen:
                time.sleep(0.005)  # peeking again returns at once: wait for more to arrive
            seen = len(data)
        header = b""
        while len(header) < parsed["length"]:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(parsed["length"] - len(header))
            if not chunk:
                raise ConnectionError("EOF inside a peeked PROXY header")
            header += chunk
        return parsed, header
    finally:
        sock.settimeout(saved)


# ---- self-test -----------------------------------------------------------------------------


def _self_test():
    assert crc32c(b"123456789") == 0xE3069283

    # An IPv4 PROXY header with ALPN, AUTHORITY and SSL (every sub-TLV), written out by hand.
    v2 = (
        SIGNATURE
        + b"\x21\x11\x00\x6f"  # PROXY, TCP4, 12 + 5 + 14 + 80 = 111 bytes follow
        + b"\xc0\x00\x02\x01" + b"\xc6\x33\x64\x07" + b"\xc7\x38\x01\xbb"
        + b"\x01\x00\x02h2"
        + b"\x02\x00\x0bexample.com"
        + b"\x20\x00\x4d" + b"\x07\x00\x00\x00\x00"
        + b"\x21\x00\x07TLSv1.3"
        + b"\x22\x00\x06client"
        + b"\x23\x00\x16TLS_AES_128_GCM_SHA256"
        + b"\x24\x00\x11ecdsa-with-SHA256"
        + b"\x25\x00\x05EC256"
    )
    p = parse(v2 + b"\x16\x03\x01")
    assert p["version"] == 2 and p["length"] == len(v2) == 127, p
    assert p["command"] == "PROXY" and p["family"] == "TCP4"
    assert (p["src_addr"], p["src_port"]) == ("192.0.2.1", 51000)
    assert (p["dst_addr"], p["dst_port"]) == ("198.51.100.7", 443)
    assert [t for t, _ in p["tlvs"]] == [0x01, 0x02, 0x20]
    assert p["alpn"] == "h2" and p["authority"] == "example.com"
    ssl = p["ssl"]
    assert ssl["client"] == PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    assert ssl["verify"] == 0
    assert ssl["sub"] == {
        0x21: b"TLSv1.3",
        0x22: b"client",
        0x23: b"TLS_AES_128_GCM_SHA256",
        0x24: b"ecdsa-with-SHA256",
        0x25: b"EC256",
    }
    assert ssl["cipher"] == "TLS_AES_128_GCM_SHA256"
    for n in range(len(v2)):
        assert parse(v2[:n]) is None, n

    # CRC32C: computed here, then verified by parse; a flipped bit is caught.
    body = b"\x7f\x00\x00\x01\x7f\x00\x00\x02\x00\x01\x00\x02" + b"\x03\x00\x04\0\0\0\0"
    unsummed = SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
    summed = unsummed[:-4] + struct.pack("!I", crc32c(unsummed))
    assert parse(summed)["crc32c"] == 0xBA841157
    _expect_invalid(summed[:-1] + bytes([summed[-1] ^ 1]))

    # v1.
    p = parse(b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\nGET")
    assert p["length"] == 48 and p["family"] == "TCP6", p
    assert (p["src_addr"], p["src_port"], p["dst_addr"], p["dst_port"]) == (
        "2001:db8::1", 0, "::ffff:10.0.0.1", 65535)
    assert parse(b"PROXY UNKNOWN\r\n")["family"] == "UNKNOWN"
    assert parse(b"PROX") is None
    for bad in (
        b"\x16\x03\x01\x02\x00",
        b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n",
        SIGNATURE[:5] + b"x",
        SIGNATURE + b"\x11",
        SIGNATURE + b"\x21\x11\x00\x0b",
        SIGNATURE + b"\x21\x11\x00\x0e" + bytes(12) + b"\x01\x00",
        SIGNATURE + b"\x21\x11\x00\x11" + bytes(12) + b"\x20\x00\x02\x01\x00",
        SIGNATURE + b"\x21\x11\x00\x16" + bytes(12) + b"\x20\x00\x07\x01\0\0\0\0\x21\x00",
    ):
        _expect_invalid(bad)

    # recv_header leaves the bytes after the header in the socket.
    a, b = socket.socketpair()
    try:
        a.sendall(v2[:20])
        a.sendall(v2[20:] + b"payload")
        parsed, header = recv_header(b, timeout=2)
        assert header == v2 and parsed["authority"] == "example.com"
        assert b.recv(100) == b"payload"
    finally:
        a.close()
        b.close()
    print("proxyproto self-test: ok")


def _expect_invalid(data):
    try:
        parse(data)
    except ProxyProtocolError:
        return
    raise AssertionError("accepted %r" % data)


if __name__ == "__main__":
    _self_test()
