import { beforeAll, describe, expect, it } from 'vitest';
import { CERT_LABEL, canonicalCert, canonicalGrant, GRANT_LABEL, issueCert, signGrant, TrustAnchor } from '../../src/control/cert';
import { MAX_GROUPS, parseHostCert, RECORD_CAPS, serializeHostCert, serializeTokenGrant } from '../../src/control/records';
import {
  compilePolicy,
  memberOf,
  parsePolicy,
  parsePolicyFile,
  PolicyHolder,
  serializePolicy,
  signPolicy,
  type PolicyRule,
} from '../../src/control/policy';
import { C_DENIED, C_REPLIES, C_RULES, counterSlots, flowTableBytes, FLOW_TTL_MS, PacketFilter } from '../../src/dataplane/policy';
import { loadEd25519, type Ed25519, type SigningKeyPair } from '../../src/crypto/sign';
import { isCladnetError } from '../../src/errors';
import { createRootLogger } from '../../src/log';
import { parseIpv4 } from '../../src/util/ipv4';
import { rng } from '../helpers/rng';
import { hostIp6, overlay6Of, overlayPrefix6 } from '../../src/control/overlay6';

const X = (n: number) => Buffer.alloc(32, n).toString('base64');
const T0 = new Date('2026-12-02T00:00:00.000Z');
const log = createRootLogger('silent');

let ed: Ed25519;
let net: SigningKeyPair;
let other: SigningKeyPair;
let anchor: TrustAnchor;

beforeAll(async () => {
  ed = await loadEd25519();
  net = ed.generate();
  other = ed.generate();
  anchor = new TrustAnchor(ed, 'demo', Buffer.from(net.publicKey).toString('base64'));
});

const WEB = '100.64.0.2';
const DB = '100.64.0.3';
const OUT = '100.64.0.4';
const WEB2 = '100.64.0.5';

/** An IPv4 packet: TCP/UDP with ports, or ICMP with type and echo id. */
function packet(src: string, dst: string, proto: number, a: number, b: number, opts: { frag?: number; len?: number; flags?: number } = {}): Buffer {
  const buf = Buffer.alloc(opts.len ?? 40);
  buf[0] = 0x45;
  buf.writeUInt16BE(buf.length, 2);
  buf.writeUInt16BE(opts.frag ?? 0, 6);
  buf[8] = 64;
  buf[9] = proto;
  buf.writeUInt32BE(parseIpv4(src)!, 12);
  buf.writeUInt32BE(parseIpv4(dst)!, 16);
  if (buf.length >= 28) {
    if (proto === 1) {
      buf[20] = a; // type
      buf.writeUInt16BE(b, 24); // echo id
    } else {
      buf.writeUInt16BE(a, 20);
      buf.writeUInt16BE(b, 22);
      if (proto === 6) buf[33] = opts.flags ?? 0x10; // ACK unless told
    }
  }
  return buf;
}
const PREFIX6 = overlayPrefix6({ name: 'demo', created: T0.toISOString() });

/**
 * The IPv6 twin of packet(): between the overlay IPv6 addresses of two IPv4 overlay addresses
 * (`src` may be a whole IPv6 address), ICMP as ICMPv6 (type 8/0 as 128/129).
 */
function packet6(src: string | Uint8Array, dst: string, proto: number, a: number, b: number, opts: { flags?: number } = {}): Buffer {
  const buf = Buffer.alloc(60);
  buf[0] = 0x60;
  buf.writeUInt16BE(20, 4);
  buf[6] = proto === 1 ? 58 : proto;
  buf[7] = 64;
  buf.set(typeof src === 'string' ? hostIp6(PREFIX6, parseIpv4(src)!) : src, 8);
  buf.set(hostIp6(PREFIX6, parseIpv4(dst)!), 24);
  if (proto === 1) {
    buf[40] = a === 8 ? 128 : a === 0 ? 129 : a;
    buf.writeUInt16BE(b, 44);
  } else {
    buf.writeUInt16BE(a, 40);
    buf.writeUInt16BE(b, 42);
    if (proto === 6) buf[53] = opts.flags ?? 0x10;
  }
  return buf;
}
const tcp6 = (src: string, dst: string, sp: number, dp: number) => packet6(src, dst, 6, sp, dp);
const udp6 = (src: string, dst: string, sp: number, dp: number) => packet6(src, dst, 17, sp, dp);
const icmp6 = (src: string, dst: string, type: number, id: number) => packet6(src, dst, 1, type, id);
const tcp = (src: string, dst: string, sp: number, dp: number) => packet(src, dst, 6, sp, dp);
const udp = (src: string, dst: string, sp: number, dp: number) => packet(src, dst, 17, sp, dp);
const icmp = (src: string, dst: string, type: number, id: number) => packet(src, dst, 1, type, id);

const WEB_DB: PolicyRule[] = [
  { id: 'web-db-pg', from: 'group:web', to: 'group:db', proto: 'tcp', ports: '5432' },
  { from: 'group:web', to: 'group:db', proto: 'icmp' },
];

const members = {
  web: { name: 'web', overlayIp: WEB, groups: ['web'] },
  web2: { name: 'web2', overlayIp: WEB2, groups: ['edge', 'web'] },
  db: { name: 'db', overlayIp: DB, groups: ['db'] },
  out: { name: 'out', overlayIp: OUT, groups: [] },
};

function clock(start = 1000) {
  const c = { t: start, now: () => c.t, mono: () => c.t };
  return c;
}

function filterFor(self: keyof typeof members, rules: PolicyRule[], serial = 1, c = clock(), shared?: SharedArrayBuffer) {
  const p = signPolicy(ed, net.secretKey, { network: 'demo', serial, rules, now: T0 });
  const compiled = compilePolicy(
    p,
    members[self],
    Object.values(members).filter((m) => m.name !== self),
  );
  const f = new PacketFilter(c, 64, shared);
  const o6 = overlay6Of(PREFIX6);
  f.setOverlay6(o6.hi, o6.mid);
  const counters = new Float64Array(counterSlots(p.rules.length));
  f.set(compiled, counters);
  const ok = (b: Buffer) => f.allows(b, 0, b.length);
  return { f, counters, ok, c, compiled };
}

describe('policy document', () => {
  it('a signed policy round-trips through etcd text and verifies against the network key only', () => {
    const p = signPolicy(ed, net.secretKey, { network: 'demo', serial: 7, rules: WEB_DB, now: T0 });
    const back = parsePolicy(serializePolicy(p), { network: 'demo' });
    expect(back.ok).toBe(true);
    expect(anchor.verifyPolicy(back.ok ? back.value : p)).toBeNull();
    const forged = signPolicy(ed, other.secretKey, { network: 'demo', serial: 8, rules: WEB_DB, now: T0 });
    expect(anchor.verifyPolicy(forged)).toMatch(/^signature: not signed by this network's key/);
    // a rule changed after signing (an etcd writer opening port 22)
    const tampered = { ...p, rules: [{ ...p.rules[0]!, ports: '22' }, p.rules[1]!] };
    expect(anchor.verifyPolicy(tampered)).toMatch(/^signature/);
    const otherNet = signPolicy(ed, net.secretKey, { network: 'prod', serial: 9, rules: WEB_DB, now: T0 });
    expect(anchor.verifyPolicy(otherNet)).toMatch(/^network: "prod" is not this network/);
  });

  it('bad rules are refused with EPOLICY naming the field', () => {
    const bad: [string, string][] = [
      ['{"rules": [{"from": "group:web", "to": "group:db", "proto": "sctp"}]}', 'rules[0].proto'],
      ['{"rules": [{"from": "group:Web", "to": "any"}]}', 'rules[0].from'],
      ['{"rules": [{"from": "any", "to": "100.64.0.0/10"}]}', 'rules[0].to'],
      ['{"rules": [{"from": "100.64.0.1/10", "to": "any"}]}', 'rules[0].from'],
      ['{"rules": [{"from": "any", "to": "any", "proto": "icmp", "ports": "1"}]}', 'rules[0].ports'],
      ['{"rules": [{"from": "any", "to": "any", "proto": "tcp", "ports": "90-80"}]}', 'rules[0].ports'],
      ['{"rules": [{"from": "any", "to": "any", "proto": "tcp", "ports": "70000"}]}', 'rules[0].ports'],
      ['{"rules": [{"from": "any", "to": "any", "port": "22"}]}', 'rules[0].port'],
      ['{"rules": [{"id": "a", "from": "any", "to": "any"}, {"id": "a", "from": "any", "to": "any"}]}', 'rules[1].id'],
      ['{"rules": {}}', 'rules'],
      ['not json', 'json'],
    ];
    for (const [text, field] of bad) {
      try {
        parsePolicyFile(text, 'p.json');
        expect.unreachable(text);
      } catch (e) {
        expect(isCladnetError(e, 'EPOLICY'), text).toBe(true);
        expect((e as { field?: string }).field, text).toBe(field);
      }
    }
    const ok = parsePolicyFile('{"rules": [{"from": "100.64.1.7", "to": "host:db", "proto": "udp", "ports": 53}]}', 'p.json');
    expect(ok).toEqual([{ from: '100.64.1.7/32', to: 'host:db', proto: 'udp', ports: '53' }]);
  });

  it('PolicyHolder applies newer signed policies only: forged, garbled, older and deleted values keep the last valid one', () => {
    const h = new PolicyHolder('demo', anchor, log);
    const v1 = serializePolicy(signPolicy(ed, net.secretKey, { network: 'demo', serial: 1, rules: WEB_DB, now: T0 }));
    const v2 = serializePolicy(signPolicy(ed, net.secretKey, { network: 'demo', serial: 2, rules: WEB_DB.slice(0, 1), now: T0 }));
    expect(h.apply(v1, '10')).toBe(true);
    expect(h.apply(v2, '11')).toBe(true);
    expect(h.current?.serial).toBe(2);
    expect(h.apply(v1, '12')).toBe(false); // replay of the older one
    expect(h.stale).toBe(1);
    const forged = serializePolicy(signPolicy(ed, other.secretKey, { network: 'demo', serial: 99, rules: [{ from: 'any', to: 'any', proto: 'any' }], now: T0 }));
    expect(h.apply(forged, '13')).toBe(false);
    expect(h.apply(v2.replace('5432', '22'), '14')).toBe(false); // garbled: signature no longer matches
    expect(h.apply('{"version":1,', '15')).toBe(false);
    expect(h.apply('{"version":1,', '15')).toBe(false); // a reload gives the same value again: counted once
    expect(h.invalid).toBe(3);
    expect(h.apply('', '16', true)).toBe(false);
    expect(h.current?.serial).toBe(2);
    expect(h.current?.rules).toHaveLength(1);
  });
});

describe('garbled policies (fuzz)', () => {
  it('parsePolicy never throws on damaged values, and nothing damaged both parses and verifies unless it is the signed text', () => {
    const rand = rng(15);
    const p = signPolicy(ed, net.secretKey, { network: 'demo', serial: 3, rules: [...WEB_DB, { from: '100.64.0.0/10', to: 'any', proto: 'udp', ports: '53' }], now: T0 });
    const text = serializePolicy(p);
    let parsed = 0;
    for (let i = 0; i < 3000; i++) {
      const b = Buffer.from(text);
      const edits = 1 + Math.floor(rand() * 4);
      for (let k = 0; k < edits; k++) b[Math.floor(rand() * b.length)] = 32 + Math.floor(rand() * 95);
      const cut = rand() < 0.1 ? b.subarray(0, Math.floor(rand() * b.length)) : b;
      const r = parsePolicy(cut, { network: 'demo' });
      if (!r.ok) continue;
      parsed++;
      if (anchor.verifyPolicy(r.value) === null) expect(serializePolicy(r.value)).toBe(text); // still verifies: the signed policy itself (an edit wrote a character over itself)
    }
    expect(parsed).toBeGreaterThan(0);
  });
});

describe('certificate groups', () => {
  it('a certificate without groups keeps its canonical bytes; groups are signed, sorted and validated', () => {
    const base = { network: 'demo', name: 'web', publicKey: X(1), overlayIp: WEB, now: T0, serial: 'a'.repeat(32) };
    const plain = issueCert(ed, net.secretKey, base);
    const { version, network, name, publicKey, overlayIp, issued, notAfter, serial } = plain;
    const old = CERT_LABEL + JSON.stringify({ version, network, name, publicKey, overlayIp, issued, notAfter, serial });
    expect(Buffer.from(canonicalCert(plain)).toString()).toBe(old);
    expect(plain.groups).toBeUndefined();
    const grouped = issueCert(ed, net.secretKey, { ...base, groups: ['web', 'edge', 'web'] });
    expect(grouped.groups).toEqual(['edge', 'web']);
    expect(anchor.verifyCert(grouped, T0.getTime())).toBeNull();
    // an etcd writer adding a group to a certificate breaks its signature
    const more = parseHostCert({ ...grouped, groups: ['db', 'edge', 'web'] });
    expect(more.ok && anchor.verifyCert(more.value, T0.getTime())).toMatch(/signature/);
    expect(() => issueCert(ed, net.secretKey, { ...base, groups: ['Web'] })).toThrow(/groups: "Web" is not a valid group name/);
    expect(() => issueCert(ed, net.secretKey, { ...base, groups: ['g'.repeat(33)] })).toThrow(/is not a valid group name \(1-32/);
    expect(() => issueCert(ed, net.secretKey, { ...base, groups: Array.from({ length: MAX_GROUPS + 1 }, (_, i) => `g${i}`) })).toThrow(/more than 8/);
    const unsorted = parseHostCert({ ...grouped, groups: ['web', 'edge'] });
    expect(unsorted.ok ? '' : unsorted.error).toMatch(/^groups: must be sorted/);
    const empty = parseHostCert({ ...grouped, groups: [] });
    expect(empty.ok).toBe(false);
  });
});

describe('join-token grants with groups', () => {
  it('hosts enrolling with a token get its groups (or fewer); more than granted is refused, even signed by the delegate key', () => {
    const delegate = ed.generate();
    const now = new Date(T0.getTime() + 1000);
    const input = { network: 'demo', names: 'web-*', uses: 3, ttlMs: 3_600_000, certDays: 30, delegateKey: Buffer.from(delegate.publicKey).toString('base64'), now: T0 };
    const plain = signGrant(ed, net.secretKey, input);
    const { version, network, id, names, uses, issued, notAfter, certDays, delegateKey } = plain;
    expect(Buffer.from(canonicalGrant(plain)).toString()).toBe(GRANT_LABEL + JSON.stringify({ version, network, id, names, uses, issued, notAfter, certDays, delegateKey }));
    const grant = signGrant(ed, net.secretKey, { ...input, groups: ['web', 'edge'] });
    expect(grant.groups).toEqual(['edge', 'web']);
    expect(anchor.verifyGrant(grant)).toBeNull();
    const base = { network: 'demo', name: 'web-1', publicKey: X(2), overlayIp: WEB, now };
    const all = issueCert(ed, delegate.secretKey, { ...base, token: { grant, use: 1 } });
    expect(all.groups).toEqual(['edge', 'web']);
    expect(anchor.verifyCert(all, now.getTime())).toBeNull();
    const fewer = issueCert(ed, delegate.secretKey, { ...base, groups: ['web'], token: { grant, use: 2 } });
    expect(anchor.verifyCert(fewer, now.getTime())).toBeNull();
    try {
      issueCert(ed, delegate.secretKey, { ...base, groups: ['db'], token: { grant, use: 3 } });
      expect.unreachable();
    } catch (e) {
      expect(isCladnetError(e, 'ETOKENSCOPE')).toBe(true);
    }
    // the token holder signs a certificate with a group the grant lacks: the delegate key's signature is not enough
    const noGroups = issueCert(ed, delegate.secretKey, { ...base, token: { grant: plain, use: 1 } });
    expect(noGroups.groups).toBeUndefined();
    const { signature: _s, ...unsigned } = { ...noGroups, groups: ['db'] };
    const smuggled = { ...unsigned, signature: Buffer.from(ed.sign(canonicalCert(unsigned), delegate.secretKey)).toString('base64') };
    expect(anchor.verifyCert(smuggled, now.getTime())).toMatch(/^cert\.groups: db not granted by token/);
  });

  it('the largest grant and token-use certificate with groups fit their record caps with 2x headroom', () => {
    const delegate = ed.generate();
    const groups = Array.from({ length: MAX_GROUPS }, (_, i) => `g${i}`.padEnd(32, 'x'));
    const network = `n${'y'.repeat(61)}z`;
    const grant = signGrant(ed, net.secretKey, {
      ...{ network, names: `h${'x'.repeat(60)}*`, uses: 1000, ttlMs: 3_600_000, certDays: 3650, groups },
      delegateKey: Buffer.from(delegate.publicKey).toString('base64'),
    });
    const cert = issueCert(ed, delegate.secretKey, { network, name: `h${'x'.repeat(61)}z`, publicKey: X(3), overlayIp: '100.127.255.254', token: { grant, use: 1000 } });
    const sizes = { token: serializeTokenGrant(grant).length, tokenUse: serializeHostCert(cert).length };
    console.log(`largest grant with groups ${sizes.token} B (cap ${RECORD_CAPS.token}), token-use certificate ${sizes.tokenUse} B (cap ${RECORD_CAPS.tokenUse})`);
    expect(sizes.token * 2).toBeLessThan(RECORD_CAPS.token);
    expect(sizes.tokenUse * 2).toBeLessThan(RECORD_CAPS.tokenUse);
  });
});

describe('compilePolicy', () => {
  it('keeps the rules whose `to` names this host and resolves sources through certificates', () => {
    const p = signPolicy(ed, net.secretKey, {
      network: 'demo',
      serial: 1,
      rules: [
        ...WEB_DB,
        { from: 'host:out', to: 'host:web', proto: 'tcp', ports: '80-81' },
        { from: '100.64.0.4/32', to: 'group:db', proto: 'udp' },
      ],
      now: T0,
    });
    const db = compilePolicy(p, members.db, [members.web, members.web2, members.out]);
    expect(db.rules.map((r) => r.index)).toEqual([0, 1, 3]);
    expect(db.open).toBe(false);
    const by = new Map(db.peers.map((x) => [x.ip, x.rules]));
    expect(by.get(parseIpv4(WEB)!)).toEqual([0, 1]);
    expect(by.get(parseIpv4(WEB2)!)).toEqual([0, 1]);
    expect(by.get(parseIpv4(OUT)!)).toEqual([2]);
    expect(db.other).toEqual([{ rule: 2, base: parseIpv4(OUT), len: 32 }]);
    const web = compilePolicy(p, members.web, [members.db, members.out]);
    expect(web.rules).toEqual([{ index: 2, proto: 6, portLo: 80, portHi: 81 }]);
    const open = signPolicy(ed, net.secretKey, { network: 'demo', serial: 2, rules: [{ from: 'any', to: 'any', proto: 'any' }], now: T0 });
    expect(compilePolicy(open, members.db, []).open).toBe(true);
  });
});

describe('PacketFilter', () => {
  it('web reaches db on TCP 5432 and ICMP only; db denies TCP 22 and anything from outside the groups, counted per rule', () => {
    const { ok, counters } = filterFor('db', WEB_DB);
    expect(ok(tcp(WEB, DB, 40000, 5432))).toBe(true);
    expect(ok(tcp(WEB, DB, 40000, 5432))).toBe(true); // cached flow, counted on its rule too
    expect(ok(tcp(WEB2, DB, 40001, 5432))).toBe(true);
    expect(ok(icmp(WEB, DB, 8, 77))).toBe(true);
    expect(ok(tcp(WEB, DB, 40000, 22))).toBe(false);
    expect(ok(udp(WEB, DB, 40000, 5432))).toBe(false);
    expect(ok(tcp(OUT, DB, 40000, 5432))).toBe(false);
    expect(ok(icmp(OUT, DB, 8, 1))).toBe(false);
    expect(ok(tcp('100.64.9.9', DB, 1, 5432))).toBe(false); // no peer's address: only CIDR/any rules
    expect(counters[C_RULES + 0]).toBe(3);
    expect(counters[C_RULES + 1]).toBe(1);
    expect(counters[C_DENIED]).toBe(5);
  });

  it('replies to flows this host started pass (TCP, UDP, ICMP echo); unsolicited packets do not', () => {
    const { f, ok, counters } = filterFor('web', WEB_DB);
    // web has no rule naming it: nothing comes in unasked
    expect(ok(tcp(DB, WEB, 5432, 40000))).toBe(false);
    const syn = tcp(WEB, DB, 40000, 5432);
    f.track(syn, 0, syn.length);
    expect(ok(tcp(DB, WEB, 5432, 40000))).toBe(true);
    expect(ok(tcp(DB, WEB, 5432, 40001))).toBe(false); // another port: not the flow
    expect(ok(tcp(OUT, WEB, 5432, 40000))).toBe(false); // another host
    const q = udp(WEB, DB, 5353, 53);
    f.track(q, 0, q.length);
    expect(ok(udp(DB, WEB, 53, 5353))).toBe(true);
    const ping = icmp(WEB, DB, 8, 4242);
    f.track(ping, 0, ping.length);
    expect(ok(icmp(DB, WEB, 0, 4242))).toBe(true);
    expect(ok(icmp(DB, WEB, 8, 4242))).toBe(false); // an echo request back is no reply
    expect(ok(icmp(DB, WEB, 0, 4243))).toBe(false);
    expect(counters[C_REPLIES]).toBe(3);
    expect(counters[C_DENIED]).toBe(5);
  });

  it('flow entries expire on the injected clock; a new policy re-decides flows its rules allowed but keeps replies', () => {
    const c = clock();
    const { f, ok } = filterFor('db', WEB_DB, 1, c);
    const syn = tcp(DB, OUT, 33000, 443);
    f.track(syn, 0, syn.length);
    expect(ok(tcp(WEB, DB, 40000, 5432))).toBe(true);
    c.t += FLOW_TTL_MS.udp + 1;
    f.tick();
    const q = udp(DB, WEB, 5353, 53);
    f.track(q, 0, q.length);
    c.t += FLOW_TTL_MS.udp + 1;
    f.tick();
    expect(ok(udp(WEB, DB, 53, 5353))).toBe(false); // expired
    expect(ok(tcp(OUT, DB, 443, 33000))).toBe(true); // TCP lives longer
    // a new policy without the pg rule: the cached web->db:5432 flow is decided again and denied
    const p2 = signPolicy(ed, net.secretKey, { network: 'demo', serial: 2, rules: WEB_DB.slice(1), now: T0 });
    f.set(compilePolicy(p2, members.db, [members.web, members.out]), new Float64Array(counterSlots(1)));
    expect(ok(tcp(WEB, DB, 40000, 5432))).toBe(false);
    expect(ok(tcp(OUT, DB, 443, 33000))).toBe(true); // our own flow's replies still pass
    c.t += FLOW_TTL_MS.tcp + 1;
    f.tick();
    expect(ok(tcp(OUT, DB, 443, 33000))).toBe(false);
  });

  it("our answers on a flow the peer started (a rule allowed it) count on that rule and do not keep it open under a new policy", () => {
    const { f, ok, counters } = filterFor('db', WEB_DB);
    expect(ok(packet(WEB, DB, 6, 40000, 5432, { flags: 0x02 }))).toBe(true); // SYN
    const synAck = packet(DB, WEB, 6, 5432, 40000, { flags: 0x12 });
    f.track(synAck, 0, synAck.length);
    expect(ok(tcp(WEB, DB, 40000, 5432))).toBe(true);
    expect(counters[C_RULES + 0]).toBe(2);
    expect(counters[C_REPLIES]).toBe(0);
    const p2 = signPolicy(ed, net.secretKey, { network: 'demo', serial: 2, rules: WEB_DB.slice(1), now: T0 });
    f.set(compilePolicy(p2, members.db, [members.web]), new Float64Array(counterSlots(1)));
    const ack = tcp(DB, WEB, 5432, 40000);
    f.track(ack, 0, ack.length);
    expect(ok(tcp(WEB, DB, 40000, 5432))).toBe(false);
    // a SYN of ours on the same ports is a new flow of ours: its replies pass
    const syn = packet(DB, WEB, 6, 5432, 40000, { flags: 0x02 });
    f.track(syn, 0, syn.length);
    expect(ok(tcp(WEB, DB, 40000, 5432))).toBe(true);
  });

  it('a shared flow table (several workers): no worker matches an entry another is writing, whole or half written', () => {
    const CAP = 64;
    const sab = new SharedArrayBuffer(flowTableBytes(CAP));
    const { f, ok } = filterFor('web', WEB_DB, 1, clock(), sab);
    const syn = tcp(WEB, DB, 40000, 5432);
    f.track(syn, 0, syn.length);
    expect(ok(tcp(DB, WEB, 5432, 40000))).toBe(true);
    // The table as the other workers see it (layout: policy.ts constructor).
    const exp = new Float64Array(sab, 0, CAP);
    const ports = new Int32Array(sab, 16 * CAP, CAP);
    const ver = new Int32Array(sab, 30 * CAP, CAP);
    const slot = exp.findIndex((e) => e > 0);
    expect(slot).toBeGreaterThanOrEqual(0);
    expect(ver[slot]! % 2).toBe(0);
    // Another worker starts rewriting that entry (version odd) and has written the ports of a
    // flow nobody started: neither the old flow nor the half-written mix may match meanwhile.
    const v = ver[slot]!;
    const old = ports[slot]!;
    Atomics.store(ver, slot, v + 1);
    expect(ok(tcp(DB, WEB, 5432, 40000))).toBe(false);
    ports[slot] = old + 1; // (the key packs both ports; +1 moves one of them)
    const torn = [tcp(DB, WEB, 5432, 40001), tcp(DB, WEB, 5433, 40000)];
    expect(torn.map(ok)).toEqual([false, false]);
    // The writer finishes (here: puts the old flow back): matched again.
    ports[slot] = old;
    Atomics.store(ver, slot, v + 2);
    expect(ok(tcp(DB, WEB, 5432, 40000))).toBe(true);
    // And a write of our own while that entry is in flux leaves it alone (ours is lost).
    Atomics.store(ver, slot, v + 3);
    f.track(syn, 0, syn.length);
    expect(ver[slot]).toBe(v + 3);
    expect(ports[slot]).toBe(old);
  });

  it('the flow table stays within its capacity, evicting the entry that expires first', () => {
    const c = clock();
    const f = new PacketFilter(c, 64);
    f.set({ serial: 1, ruleCount: 0, open: false, rules: [], peers: [], other: [] });
    for (let i = 0; i < 5000; i++) {
      c.t += 1;
      f.tick();
      const p = udp(WEB, DB, 1024 + (i % 60000), 53);
      f.track(p, 0, p.length);
    }
    expect(f.flows()).toBeLessThanOrEqual(64);
    expect(f.flows()).toBeGreaterThan(32);
    expect(f.evictions).toBeGreaterThan(4000);
    // the newest flow is still there
    expect(f.allows(udp(DB, WEB, 53, 1024 + 4999), 0, 40)).toBe(true);
  });

  it('later fragments match only rules without ports; a truncated transport header is denied', () => {
    const rules: PolicyRule[] = [...WEB_DB, { from: 'host:out', to: 'host:db', proto: 'udp' }];
    const { ok } = filterFor('db', rules);
    expect(ok(packet(WEB, DB, 6, 40000, 5432, { frag: 100 }))).toBe(false);
    expect(ok(packet(OUT, DB, 17, 0, 0, { frag: 100 }))).toBe(true);
    expect(ok(packet(WEB, DB, 6, 0, 0, { len: 22 }))).toBe(false);
  });

  it('no policy or an open one: inactive (inbound.ts does not ask)', () => {
    const f = new PacketFilter(clock(), 64);
    expect(f.active).toBe(false);
    const open = signPolicy(ed, net.secretKey, { network: 'demo', serial: 2, rules: [{ from: 'any', to: 'any', proto: 'any' }], now: T0 });
    f.set(compilePolicy(open, memberOf({ name: 'db', overlayIp: DB, groups: ['db'] }), []));
    expect(f.active).toBe(false);
    f.set(compilePolicy(signPolicy(ed, net.secretKey, { network: 'demo', serial: 3, rules: WEB_DB, now: T0 }), members.db, []));
    expect(f.active).toBe(true);
    f.set(null);
    expect(f.active).toBe(false);
  });
});

describe('PacketFilter over IPv6', () => {
  /** Every case an IPv4 packet decides: its IPv6 twin must decide alike (no bypass, no extra denial). */
  it('host and group rules treat a peer\'s IPv6 packets exactly like its IPv4 ones, counted on the same rules', () => {
    const cases: [string, string, number, number, number][] = [
      [WEB, DB, 6, 40000, 5432],
      [WEB2, DB, 6, 40001, 5432],
      [WEB, DB, 1, 8, 77],
      [WEB, DB, 6, 40000, 22],
      [WEB, DB, 17, 40000, 5432],
      [OUT, DB, 6, 40000, 5432],
      [OUT, DB, 1, 8, 1],
      [WEB, DB, 1, 13, 0], // an ICMP type no rule port range excludes: the icmp rule allows it
    ];
    const v4 = filterFor('db', WEB_DB);
    const v6 = filterFor('db', WEB_DB);
    for (const [src, dst, proto, a, b] of cases) {
      const want = v4.ok(packet(src, dst, proto, a, b));
      expect(v6.ok(packet6(src, dst, proto, a, b)), `${src} -> ${dst} proto ${proto} ${a}/${b}`).toBe(want);
    }
    expect([...v6.counters]).toEqual([...v4.counters]);
    expect(v6.counters[C_DENIED]).toBe(4);
  });

  it('a rule whose source is an IPv4 CIDR matches IPv4 only; "any" matches both', () => {
    const rules: PolicyRule[] = [
      { from: '100.64.0.0/24', to: 'group:db', proto: 'tcp', ports: '80' },
      { from: '0.0.0.0/0', to: 'group:db', proto: 'udp' },
      { from: 'any', to: 'group:db', proto: 'tcp', ports: '443' },
    ];
    const { ok, counters } = filterFor('db', rules);
    expect(ok(tcp(WEB, DB, 40000, 80))).toBe(true);
    expect(ok(tcp6(WEB, DB, 40000, 80))).toBe(false);
    expect(ok(udp(OUT, DB, 1, 53))).toBe(true);
    expect(ok(udp6(OUT, DB, 1, 53))).toBe(false);
    expect(ok(tcp6(OUT, DB, 40000, 443))).toBe(true);
    expect(ok(tcp(OUT, DB, 40000, 443))).toBe(true);
    expect(counters[C_RULES + 2]).toBe(2);
    expect(counters[C_DENIED]).toBe(2);
  });

  it('replies pass per family: a flow started over IPv4 lets no IPv6 packet in, and the other way round', () => {
    const { f, ok, counters } = filterFor('web', WEB_DB);
    const syn6 = packet6(WEB, DB, 6, 40000, 5432, { flags: 0x02 });
    f.track(syn6, 0, syn6.length);
    expect(ok(tcp6(DB, WEB, 5432, 40000))).toBe(true);
    expect(ok(tcp(DB, WEB, 5432, 40000))).toBe(false);
    const ping4 = icmp(WEB, DB, 8, 9);
    f.track(ping4, 0, ping4.length);
    expect(ok(icmp(DB, WEB, 0, 9))).toBe(true);
    expect(ok(icmp6(DB, WEB, 0, 9))).toBe(false);
    const ping6 = icmp6(WEB, DB, 8, 10);
    f.track(ping6, 0, ping6.length);
    expect(ok(icmp6(DB, WEB, 0, 10))).toBe(true);
    expect(ok(icmp6(DB, WEB, 8, 10))).toBe(false); // an echo request back is no reply
    expect(counters[C_REPLIES]).toBe(3);
    expect(counters[C_DENIED]).toBe(3);
  });

  it('an IPv6 source outside the overlay prefix matches only "any" rules, whatever its last 32 bits say', () => {
    const rules: PolicyRule[] = [...WEB_DB, { from: 'any', to: 'group:db', proto: 'udp', ports: '53' }];
    const { ok } = filterFor('db', rules);
    const foreign = hostIp6(PREFIX6, parseIpv4(WEB)!);
    foreign[1] ^= 1;
    expect(ok(packet6(foreign, DB, 6, 40000, 5432))).toBe(false);
    expect(ok(packet6(foreign, DB, 17, 40000, 53))).toBe(true);
    expect(ok(tcp6(WEB, DB, 40000, 5432))).toBe(true);
  });

  it('a truncated IPv6 transport header is denied; an extension header first has no ports (only rules without ports match)', () => {
    const { ok } = filterFor('db', [...WEB_DB, { from: 'group:web', to: 'group:db', proto: 'any' }]);
    const t = tcp6(WEB, DB, 40000, 5432);
    expect(ok(t.subarray(0, 43))).toBe(false);
    const frag = tcp6(WEB2, DB, 40000, 22);
    frag[6] = 44; // a fragment header
    expect(ok(frag)).toBe(true); // the proto any rule
    const only = filterFor('db', WEB_DB);
    expect(only.ok(frag)).toBe(false);
  });

  it('random IPv6 packets (overlay and foreign sources, any next header, any length) never throw, and every decision is counted', () => {
    const { f, ok, counters } = filterFor('db', [...WEB_DB, { from: 'any', to: 'group:db', proto: 'udp', ports: '53' }]);
    const r = rng(616);
    let decided = 0;
    for (let i = 0; i < 5000; i++) {
      const base = packet6(r() < 0.5 ? WEB : OUT, DB, [6, 17, 1, 0, 44, 59][Math.floor(r() * 6)]!, Math.floor(r() * 65536), Math.floor(r() * 65536));
      for (let k = 0; k < 4; k++) base[Math.floor(r() * base.length)] = Math.floor(r() * 256);
      base[0] = 0x60 | (base[0]! & 15);
      const len = 40 + Math.floor(r() * 21);
      const p = base.subarray(0, len);
      expect(() => f.track(p, 0, p.length)).not.toThrow();
      ok(p);
      decided++;
    }
    const counted = counters.reduce((a, b) => a + b, 0);
    expect(counted).toBe(decided);
  });
});

