import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { C_FIELD_PATHS, CMSG_LEN_INT, CMSG_LEN_U16, CMSG_SPACE_INT, CMSG_SPACE_U16, IFNAMSIZ, LAYOUTS, memberOf } from '../../src/os/ffi/abi';
import * as libc from '../../src/os/ffi/libc';
import * as netlink from '../../src/os/netlink';
import * as offload from '../../src/dataplane/offload';
import { writeSockaddrIn, writeSockaddrIn6 } from '../../src/os/udp/udp';

/**
 * The ABI check (issue 14): native/abi-check.c, compiled here with the system C compiler, prints
 * what this machine's headers say about every struct and constant native/cladnet_abi.h lists; each
 * number must equal the TypeScript side (src/os/ffi/abi.ts's koffi layouts, the constants in
 * libc.ts, netlink.ts and offload.ts, and sizes still written as literals elsewhere in src/).
 * No compiler is a failure, not a skip: scripts/setup.sh test installs gcc and libc6-dev.
 */

const REPO = path.resolve(__dirname, '..', '..');
const NATIVE = path.join(REPO, 'native');

interface CAbi {
  target: { pointer: number; long: number; littleEndian: boolean };
  structs: Record<string, { size: number; align: number }>;
  fields: Record<string, { offset: number; size: number }>;
  sizes: Record<string, number>;
  constants: Record<string, number>;
}

/** Constants whose TypeScript name differs from C's. */
const TS_CONSTANT: Record<string, number> = {
  VIRTIO_NET_HDR_F_NEEDS_CSUM: offload.VNET_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_F_DATA_VALID: offload.VNET_F_DATA_VALID,
  VIRTIO_NET_HDR_GSO_NONE: offload.GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4: offload.GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6: offload.GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_ECN: offload.GSO_ECN,
};

function tsConstant(name: string): number | undefined {
  if (name in TS_CONSTANT) return TS_CONSTANT[name];
  for (const mod of [libc, netlink] as Record<string, unknown>[]) {
    const v = mod[name];
    if (typeof v === 'number') return v;
  }
  return undefined;
}

const TS_SIZES: Record<string, number> = { CMSG_SPACE_U16, CMSG_LEN_U16, CMSG_SPACE_INT, CMSG_LEN_INT, IFNAMSIZ };

/** Every difference between the C side and the TypeScript layouts, each naming the struct and field. */
export function abiMismatches(c: CAbi): string[] {
  const out: string[] = [];
  for (const [name, s] of Object.entries(c.structs)) {
    const ts = LAYOUTS[name];
    if (!ts) {
      out.push(`struct ${name}: no TypeScript layout in src/os/ffi/abi.ts`);
      continue;
    }
    if (ts.size !== s.size) out.push(`struct ${name}: size is ${s.size} in C, ${ts.size} in TypeScript`);
    if (ts.align !== s.align) out.push(`struct ${name}: alignment is ${s.align} in C, ${ts.align} in TypeScript`);
  }
  for (const name of Object.keys(LAYOUTS)) {
    if (!c.structs[name]) out.push(`struct ${name}: declared in src/os/ffi/abi.ts but not listed in native/cladnet_abi.h`);
  }
  for (const [key, f] of Object.entries(c.fields)) {
    const [struct, field] = key.split('.') as [string, string];
    const ts = LAYOUTS[struct];
    if (!ts) continue; // reported above
    const m = memberOf(ts, C_FIELD_PATHS[key] ?? field);
    if (!m) {
      out.push(`struct ${struct}, field ${field}: missing in the TypeScript layout`);
      continue;
    }
    if (m.offset !== f.offset) out.push(`struct ${struct}, field ${field}: offset is ${f.offset} in C, ${m.offset} in TypeScript`);
    if (m.size !== f.size) out.push(`struct ${struct}, field ${field}: size is ${f.size} in C, ${m.size} in TypeScript`);
  }
  for (const [name, v] of Object.entries(c.sizes)) {
    if (TS_SIZES[name] !== v) out.push(`${name}: ${v} in C, ${TS_SIZES[name] ?? 'missing'} in src/os/ffi/abi.ts`);
  }
  for (const [name, v] of Object.entries(c.constants)) {
    const ts = tsConstant(name);
    if (ts !== v) out.push(`constant ${name}: ${v} in C, ${ts ?? 'missing'} in TypeScript`);
  }
  return out;
}

/** `const NAME = 123;` copies of struct sizes in src/ that do not (yet) come from abi.ts, by file. */
function literalCopies(c: CAbi): { file: string; name: string; value: number; c: number }[] {
  const expected: Record<string, number> = {
    MMSG: c.structs['mmsghdr']!.size,
    IOVEC: c.structs['iovec']!.size,
    SOCKADDR_IN: c.structs['sockaddr_in']!.size,
    SOCKADDR_IN6: c.structs['sockaddr_in6']!.size,
    SOCKADDR_NL: c.structs['sockaddr_nl']!.size,
    SOCKADDR_UN_SIZE: c.structs['sockaddr_un']!.size,
    SUN_PATH_MAX: c.fields['sockaddr_un.sun_path']!.size,
    NLMSG_HDRLEN: c.structs['nlmsghdr']!.size,
    POLLFD: c.structs['pollfd']!.size,
    IFREQ: c.structs['ifreq']!.size,
    VNET_HDR_LEN: c.structs['virtio_net_hdr']!.size,
    ...c.sizes,
  };
  const found: { file: string; name: string; value: number; c: number }[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) {
        for (const m of fs.readFileSync(p, 'utf8').matchAll(/\bconst ([A-Z][A-Z0-9_]*) = (\d+);/g)) {
          const want = expected[m[1]!];
          if (want !== undefined) found.push({ file: path.relative(REPO, p), name: m[1]!, value: Number(m[2]), c: want });
        }
      }
    }
  };
  walk(path.join(REPO, 'src'));
  return found;
}

function compiler(): string {
  for (const cc of ['cc', 'gcc']) {
    try {
      execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cc], { stdio: 'pipe' });
      return cc;
    } catch {
      /* next */
    }
  }
  throw new Error('no C compiler (cc or gcc) on PATH: scripts/setup.sh test installs gcc');
}

describe('native ABI: the C headers against the TypeScript layouts', () => {
  let dir: string;
  let c: CAbi;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-abi-'));
    const exe = path.join(dir, 'abi-check');
    try {
      execFileSync(compiler(), ['-std=c11', '-Wall', '-Wextra', '-Werror', '-o', exe, path.join(NATIVE, 'abi-check.c')], {
        stdio: 'pipe',
      });
    } catch (e) {
      const err = e as { stderr?: Buffer; message: string };
      throw new Error(`native/abi-check.c did not compile: ${err.stderr?.toString() || err.message}`);
    }
    c = JSON.parse(execFileSync(exe, { encoding: 'utf8' })) as CAbi;
  });

  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the machine is the target the binding is written for: 64-bit pointers and longs, little-endian', () => {
    expect(c.target).toEqual({ pointer: 8, long: 8, littleEndian: true });
  });

  it('lists every struct the binding lays out by hand, with its fields', () => {
    expect(Object.keys(c.structs).sort()).toEqual(
      [
        'cmsghdr',
        'ifreq',
        'iovec',
        'mmsghdr',
        'msghdr',
        'nlmsghdr',
        'pollfd',
        'sched_attr',
        'sockaddr_in',
        'sockaddr_in6',
        'sockaddr_nl',
        'sockaddr_un',
        'virtio_net_hdr',
      ].sort(),
    );
    expect(c.fields['mmsghdr.msg_len']).toEqual({ offset: 56, size: 4 });
    expect(c.fields['sockaddr_in6.sin6_addr']).toEqual({ offset: 8, size: 16 });
    expect(Object.keys(c.constants).length).toBeGreaterThan(50);
  });

  it('every size, alignment, field offset and field size, and every constant, is the same in C and in TypeScript', () => {
    expect(abiMismatches(c)).toEqual([]);
  });

  it('every numeric constant libc.ts exports is checked against the C headers', () => {
    const unchecked = Object.entries(libc)
      .filter(([k, v]) => typeof v === 'number' && /^[A-Z][A-Z0-9_]+$/.test(k) && !(k in c.constants))
      .map(([k]) => k);
    expect(unchecked).toEqual([]);
  });

  it('a mismatch names the struct and the field', () => {
    const bad: CAbi = JSON.parse(JSON.stringify(c)) as CAbi;
    bad.fields['mmsghdr.msg_len']!.offset = 52;
    bad.structs['ifreq']!.size = 32;
    bad.fields['ifreq.ifr_flags']!.offset = 14;
    bad.constants['UDP_GRO'] = 105;
    bad.structs['timespec'] = { size: 16, align: 8 };
    expect(abiMismatches(bad)).toEqual([
      'struct ifreq: size is 32 in C, 40 in TypeScript',
      'struct timespec: no TypeScript layout in src/os/ffi/abi.ts',
      'struct mmsghdr, field msg_len: offset is 52 in C, 56 in TypeScript',
      'struct ifreq, field ifr_flags: offset is 14 in C, 16 in TypeScript',
      'constant UDP_GRO: 105 in C, 104 in TypeScript',
    ]);
  });

  it('sizes still written as literals in src/ (const NAME = n) agree with the C headers', () => {
    const copies = literalCopies(c);
    const wrong = copies.filter((x) => x.value !== x.c).map((x) => `${x.file}: ${x.name} = ${x.value}, C says ${x.c}`);
    expect(wrong).toEqual([]);
  });

  it('the dual-stack socket writes sockaddr_in6 at the C offsets, an IPv4 peer as ::ffff:a.b.c.d', () => {
    const f = (k: string) => c.fields[k]!.offset;
    const size = c.structs['sockaddr_in6']!.size;
    const sa = Buffer.alloc(size, 0xff);
    writeSockaddrIn6(sa, 0, 1, 0x20010db8, 0, 0, 51820); // [2001:db8::1]:51820
    expect(sa.readUInt16LE(f('sockaddr_in6.sin6_family'))).toBe(c.constants['AF_INET6']);
    expect(sa.readUInt16BE(f('sockaddr_in6.sin6_port'))).toBe(51820);
    expect(sa.readUInt32BE(f('sockaddr_in6.sin6_flowinfo'))).toBe(0);
    const a = f('sockaddr_in6.sin6_addr');
    expect(sa.subarray(a, a + 16).toString('hex')).toBe('20010db8000000000000000000000001');
    expect(sa.readUInt32LE(f('sockaddr_in6.sin6_scope_id'))).toBe(0);
    writeSockaddrIn6(sa, 0, 0xc6120001, 0, 0, 0, 51820); // 198.18.0.1 on the dual-stack socket
    expect(sa.subarray(a, a + 16).toString('hex')).toBe('00000000000000000000ffffc6120001');
    expect(c.constants['IPV6_V6ONLY']).toBe(libc.IPV6_V6ONLY);
  });

  it('the code that fills sockaddr_in and virtio_net_hdr writes at the C offsets', () => {
    const f = (k: string) => c.fields[k]!.offset;
    const sa = Buffer.alloc(c.structs['sockaddr_in']!.size, 0xff);
    writeSockaddrIn(sa, 0, 0xc6120001, 51820); // 198.18.0.1:51820
    expect(sa.readUInt16LE(f('sockaddr_in.sin_family'))).toBe(c.constants['AF_INET']);
    expect(sa.readUInt16BE(f('sockaddr_in.sin_port'))).toBe(51820);
    expect(sa.readUInt32BE(f('sockaddr_in.sin_addr'))).toBe(0xc6120001);
    expect(sa.subarray(8, 16).every((b) => b === 0)).toBe(true); // sin_zero

    // A TCP/IPv4 packet with a partial checksum: NEEDS_CSUM, csum_start = IP header, csum_offset = 16.
    const hdr = c.structs['virtio_net_hdr']!.size;
    const buf = Buffer.alloc(hdr + 40);
    buf[hdr] = 0x45;
    buf[hdr + 9] = 6;
    expect(offload.writeVnetHeader(buf, hdr, true)).toBe(true);
    expect(buf[f('virtio_net_hdr.flags')]).toBe(c.constants['VIRTIO_NET_HDR_F_NEEDS_CSUM']);
    expect(buf[f('virtio_net_hdr.gso_type')]).toBe(c.constants['VIRTIO_NET_HDR_GSO_NONE']);
    expect(buf.readUInt16LE(f('virtio_net_hdr.csum_start'))).toBe(20);
    expect(buf.readUInt16LE(f('virtio_net_hdr.csum_offset'))).toBe(16);
  });
});
