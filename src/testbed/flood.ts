/**
 * A handshake flood from spoofed source addresses, for the flood tests: a raw IPv4 socket
 * (IP_HDRINCL) in one namespace writes UDP datagrams to an agent, each from the next of `sources`
 * addresses from `sourceBase` on, at `rate` datagrams a second (or as fast as one Python process
 * can), until `count` datagrams or `seconds` have gone, whichever comes first (both bounds are
 * required).
 *
 * Every datagram is an initiation-sized message (type 1, 148 bytes) with random contents and a
 * valid mac1 for `publicKey` (the worst case: an attacker who read the victim's public key from
 * etcd), except every `badEvery`-th payload, whose mac1 is wrong (a blind flood). The targets must
 * be addresses the test created (underlay 198.18.0.0/15), and so must the spoofed sources.
 */
import type { Topology } from './topology';

export interface FloodOptions {
  /** Victim's underlay address and UDP port. */
  dst: string;
  port: number;
  /** Victim's static public key (base64), for mac1. */
  publicKey: string;
  /** Spoofed sources: `sources` consecutive addresses from `sourceBase`. */
  sourceBase: string;
  sources: number;
  count: number;
  seconds: number;
  /** One payload in this many has a wrong mac1 (0: none). */
  badEvery: number;
  /**
   * Datagrams a second, paced (absent or 0: as fast as the sender can, which depends on the
   * machine: 59,000 to 190,000 a second on this project's VM over time).
   */
  rate?: number;
}

export interface FloodResult {
  sent: number;
  /** Of `sent`, those with a wrong mac1. */
  bad: number;
  /** Send errors (ENOBUFS and the like): not sent, not counted in `sent`. */
  errors: number;
  seconds: number;
}

const FLOODER = String.raw`
import base64, errno, hashlib, json, os, socket, struct, sys, time
dst, port, pub, base, sources, count, seconds, bad_every, rate = sys.argv[1:10]
port, sources, count, seconds, bad_every, rate = int(port), int(sources), int(count), float(seconds), int(bad_every), float(rate)
assert count > 0 and seconds > 0 and 0 < sources <= 65536 and rate >= 0
key = hashlib.blake2b(b"mac1----" + base64.b64decode(pub), digest_size=32).digest()
base = struct.unpack("!I", socket.inet_aton(base))[0]
dst_n = socket.inet_aton(dst)
POOL = 256
pkts, badp = [], []
for i in range(POOL):
    m = bytearray(os.urandom(148))
    m[0], m[1], m[2], m[3] = 1, 0, 0, 0
    m[116:132] = hashlib.blake2b(bytes(m[:116]), digest_size=16, key=key).digest()
    is_bad = bad_every > 0 and i % bad_every == bad_every - 1
    if is_bad:
        m[116] ^= 1
    badp.append(is_bad)
    # IPv4 header (the kernel fills in the checksum and id for IP_HDRINCL), UDP header (no checksum)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 148, 0, 0, 64, 17, 0, b"\0\0\0\0", dst_n)
    udp = struct.pack("!HHHH", 1024, port, 8 + 148, 0)
    pkts.append(bytearray(ip + udp + bytes(m)))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
pack = struct.pack_into
addr = (dst, 0)
sent = bad = errors = 0
t0 = time.monotonic()
deadline = t0 + seconds
i = 0
while sent < count:
    if (i & 255) == 0:
        now = time.monotonic()
        if now > deadline:
            break
        if rate > 0 and t0 + i / rate > now:
            time.sleep(t0 + i / rate - now)
    k = i % POOL
    p = pkts[k]
    pack("!I", p, 12, base + (i % sources))
    pack("!H", p, 20, 1024 + (i % 60000))
    i += 1
    try:
        s.sendto(p, addr)
    except OSError as e:
        errors += 1
        if e.errno == errno.ENOBUFS:
            time.sleep(0.0005)
        if errors > count:
            break
        continue
    sent += 1
    if badp[k]:
        bad += 1
print(json.dumps({"sent": sent, "bad": bad, "errors": errors, "seconds": time.monotonic() - t0}))
`;

/** Runs the flood inside `ns` and resolves when it is over (bounded by count and time). */
export async function spoofedFlood(topo: Topology, ns: string, o: FloodOptions): Promise<FloodResult> {
  if (!(o.count > 0 && o.seconds > 0 && o.seconds <= 60)) throw new Error('a flood needs a count and at most 60 s');
  if (o.rate !== undefined && !(o.rate >= 0)) throw new Error('a flood rate is a number of datagrams a second, or 0');
  const r = await topo.exec(
    ns,
    ['python3', '-c', FLOODER, o.dst, String(o.port), o.publicKey, o.sourceBase, String(o.sources), String(o.count), String(o.seconds), String(o.badEvery), String(o.rate ?? 0)],
    { timeoutMs: (o.seconds + 30) * 1000 },
  );
  return JSON.parse(r.stdout.trim()) as FloodResult;
}
