/**
 * The network spec (cidr, mtu, port) and a host's permission to relay are signed by the network
 * key, so an etcd writer can change neither. Pure checks; the etcd side is in
 * test/e2e/etcd-spec-signature.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { canonicalCert, canonicalNetworkSpec, CERT_LABEL, issueCert, mayRelay, signNetworkSpec, TrustAnchor } from '../../src/control/cert';
import { buildNetworkSpec, nextSpecSerial } from '../../src/control/networks';
import { HostRecord, NetworkSpec, parseHostCert, parseNetworkSpec, serializeHostCert, serializeNetworkSpec } from '../../src/control/records';
import { chooseNetworkSpec, checkNetworkMembership, olderThan, type Membership } from '../../src/agent/membership';
import { loadEd25519 } from '../../src/crypto/sign';
import { CladnetError } from '../../src/errors';
import { createRootLogger } from '../../src/log';

const X = (n: number) => Buffer.alloc(32, n).toString('base64');

async function fixture() {
  const ed = await loadEd25519();
  const kp = ed.generate();
  const anchor = Buffer.from(kp.publicKey).toString('base64');
  const unsigned = { version: 1 as const, name: 'demo', cidr: '100.64.0.0/24', mtu: 1420, port: 51820, created: '2026-12-01T00:00:00.000Z', trustAnchor: anchor };
  const spec = signNetworkSpec(ed, kp.secretKey, unsigned);
  const trust = new TrustAnchor(ed, 'demo', anchor);
  const cert = issueCert(ed, kp.secretKey, { network: 'demo', name: 'web-1', publicKey: X(1), overlayIp: '100.64.0.7' });
  const member: Membership = { cert, anchor: trust, file: '/test/host.cert', spec: null };
  return { ed, kp, anchor, unsigned, spec, trust, member };
}

/** The spec as an etcd writer would leave it: one field changed, the signature kept. */
function rewrite(spec: NetworkSpec, change: Partial<NetworkSpec>): NetworkSpec {
  const parsed = parseNetworkSpec(JSON.stringify({ ...JSON.parse(serializeNetworkSpec(spec)), ...change }), { name: spec.name });
  if (!parsed.ok) throw new Error(parsed.error);
  return parsed.value;
}

function refusal(f: () => unknown): CladnetError {
  try {
    f();
  } catch (e) {
    return e as CladnetError;
  }
  return expect.unreachable('expected a refusal');
}

describe('signed network spec', () => {
  it('a signed spec round-trips through etcd JSON and verifies against its anchor', async () => {
    const { spec, trust } = await fixture();
    expect(spec.signature).toMatch(/^[A-Za-z0-9+/]{86}==$/);
    const again = parseNetworkSpec(serializeNetworkSpec(spec), { name: 'demo' });
    expect(again.ok && again.value).toEqual(spec);
    expect(trust.verifySpec(spec)).toBeNull();
  });

  it.each([
    ['cidr', { cidr: '100.64.1.0/24' }],
    ['mtu', { mtu: 1280 }],
    ['port', { port: 4000 }],
    ['created', { created: '2026-12-02T00:00:00.000Z' }],
  ] as const)('a rewritten %s no longer verifies, and the agent refuses the spec', async (_f, change) => {
    const { spec, trust, member } = await fixture();
    const bad = rewrite(spec, change);
    expect(trust.verifySpec(bad)).toMatch(/^signature: /);
    const e = refusal(() => checkNetworkMembership(bad, member));
    expect(e.code).toBe('EKEY');
    expect(e.field).toBe('signature');
  });

  it('an unsigned spec (made before specs were signed) is refused with the command that fixes it', async () => {
    const { unsigned, trust, member } = await fixture();
    const spec = parseNetworkSpec(JSON.stringify(unsigned), { name: 'demo' });
    expect(spec.ok).toBe(true);
    if (!spec.ok) return;
    expect(trust.verifySpec(spec.value)).toMatch(/^signature: missing/);
    const e = refusal(() => checkNetworkMembership(spec.value, member));
    expect(e.code).toBe('EKEY');
    expect(e.message).toContain('cladnet network sign demo --network-key NET.netkey --cidr 100.64.0.0/24 --mtu 1420 --port 51820');
  });

  it('a spec signed by another key is refused even with its own anchor (the anchor is pinned)', async () => {
    const { ed, unsigned, member } = await fixture();
    const other = ed.generate();
    const forged = signNetworkSpec(ed, other.secretKey, { ...unsigned, trustAnchor: Buffer.from(other.publicKey).toString('base64') });
    expect(refusal(() => checkNetworkMembership(forged, member)).code).toBe('EKEY');
    const reSigned = signNetworkSpec(ed, other.secretKey, unsigned); // right anchor, wrong signer
    expect(refusal(() => checkNetworkMembership(reSigned, member)).field).toBe('signature');
  });

  it('the agent keeps the last good saved spec when the one in etcd is refused, and logs it', async () => {
    const { spec, member } = await fixture();
    const lines: { level: number; msg: string }[] = [];
    const log = createRootLogger('info', { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
    const bad = rewrite(spec, { mtu: 9000 });
    expect(chooseNetworkSpec(bad, spec, member, log)).toBe(spec);
    expect(lines.some((l) => l.level === 50 && /keeping the last good spec/.test(l.msg))).toBe(true);
    expect(chooseNetworkSpec(spec, null, member, log)).toBe(spec);
    expect(refusal(() => chooseNetworkSpec(bad, null, member, log)).code).toBe('EKEY');
    expect(refusal(() => chooseNetworkSpec(bad, rewrite(spec, { port: 1 }), member, log)).field).toBe('signature');
  });
});

describe('network spec serials: a replayed earlier spec', () => {
  const logLines = () => {
    const lines: { level: number; msg: string; err?: string }[] = [];
    const log = createRootLogger('info', { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
    return { lines, log };
  };

  it('a spec signed before serials existed keeps its canonical bytes, so its signature still verifies', async () => {
    const { ed, kp, unsigned, trust } = await fixture();
    const SPEC_LABEL = 'cladnet network spec v1\n';
    const { version, name, cidr, mtu, port, created, trustAnchor } = unsigned;
    const before = Buffer.from(SPEC_LABEL + JSON.stringify({ version, name, cidr, mtu, port, created, trustAnchor }));
    expect(Buffer.from(canonicalNetworkSpec(unsigned)).equals(before)).toBe(true);
    const old = { ...unsigned, signature: Buffer.from(ed.sign(before, kp.secretKey)).toString('base64') };
    const parsed = parseNetworkSpec(JSON.stringify(old), { name: 'demo' });
    expect(parsed.ok && parsed.value.serial).toBeUndefined();
    expect(parsed.ok && trust.verifySpec(parsed.value)).toBeNull();
  });

  it('the serial is signed: an etcd writer who raises it breaks the signature', async () => {
    const { ed, kp, unsigned, trust } = await fixture();
    const spec = signNetworkSpec(ed, kp.secretKey, { ...unsigned, serial: 5 });
    expect(trust.verifySpec(spec)).toBeNull();
    expect(trust.verifySpec(rewrite(spec, { serial: 6 }))).toMatch(/^signature: /);
    expect(trust.verifySpec(rewrite(spec, { serial: undefined }))).toMatch(/^signature: /);
  });

  it.each([[0], [-1], [1.5], ['7'], [2 ** 53]])('a serial of %j is refused, naming the field', (serial) => {
    const o = { version: 1, name: 'demo', cidr: '100.64.0.0/24', mtu: 1420, port: 51820, created: '2026-12-01T00:00:00.000Z', serial };
    const parsed = parseNetworkSpec(JSON.stringify(o), { name: 'demo' });
    expect(parsed.ok).toBe(false);
    expect(!parsed.ok && parsed.error).toMatch(/^serial: /);
  });

  it('serials follow the signing time and always grow, also over a replayed or a later-dated stored spec', () => {
    const t = new Date('2026-12-04T10:00:00.000Z');
    const secs = Math.floor(t.getTime() / 1000);
    expect(buildNetworkSpec({ name: 'demo', cidr: '100.64.0.0/24' }, () => t).serial).toBe(secs);
    expect(nextSpecSerial(null, t)).toBe(secs);
    const stored = (serial?: number) => ({ ...buildNetworkSpec({ name: 'demo', cidr: '100.64.0.0/24' }, () => t), serial });
    expect(nextSpecSerial(stored(undefined), t)).toBe(secs); // signed before serials existed
    expect(nextSpecSerial(stored(secs - 100), t)).toBe(secs); // an earlier spec (perhaps put back)
    expect(nextSpecSerial(stored(secs), t)).toBe(secs + 1); // signed again within the second
    expect(nextSpecSerial(stored(secs + 50), t)).toBe(secs + 51); // a clock behind the last signer's
  });

  it('the agent keeps the newer saved spec when etcd holds an earlier one the network key signed, and logs why', async () => {
    const { ed, kp, unsigned, member } = await fixture();
    const v1 = signNetworkSpec(ed, kp.secretKey, { ...unsigned, serial: 100 });
    const v2 = signNetworkSpec(ed, kp.secretKey, { ...unsigned, mtu: 1380, serial: 101 });
    const { lines, log } = logLines();
    expect(chooseNetworkSpec(v1, v2, member, log)).toBe(v2);
    const line = lines.find((l) => l.level === 50);
    expect(line?.msg).toMatch(/keeping the last good spec/);
    expect(line?.err).toMatch(/serial 100, older than serial 101 this host already ran with/);
    // the newer one from etcd replaces the saved one, silently
    expect(chooseNetworkSpec(v2, v1, member, log)).toBe(v2);
    expect(chooseNetworkSpec(v2, v2, member, log)).toBe(v2);
    expect(lines.length).toBe(1);
    // a spec signed before serials existed is older than any with one
    const legacy = signNetworkSpec(ed, kp.secretKey, unsigned);
    expect(chooseNetworkSpec(legacy, v1, member, log)).toBe(v1);
    expect(chooseNetworkSpec(v1, legacy, member, log)).toBe(v1);
    // the same serial with other content never followed the saved spec either
    const twin = signNetworkSpec(ed, kp.secretKey, { ...unsigned, port: 4000, serial: 101 });
    expect(olderThan(twin, v2)).toMatch(/serial 101 like the one this host already ran with, but other content/);
    expect(olderThan(v2, twin)).not.toBeNull();
    expect(chooseNetworkSpec(twin, v2, member, log)).toBe(v2);
    // a host without a saved spec, and a certificate file without one, cannot tell: it takes etcd's when it verifies
    expect(chooseNetworkSpec(v1, null, member, log)).toBe(v1);
    // and a saved spec that does not verify does not count, serial or not
    expect(chooseNetworkSpec(v1, rewrite(v2, { serial: 999 }), member, log)).toBe(v1);
    expect(lines.length).toBe(3);
  });

  it("a host that never ran holds etcd's spec against the one its certificate file carries", async () => {
    const { ed, kp, unsigned, member } = await fixture();
    const v1 = signNetworkSpec(ed, kp.secretKey, { ...unsigned, serial: 100 });
    const v2 = signNetworkSpec(ed, kp.secretKey, { ...unsigned, mtu: 1380, serial: 101 });
    const v3 = signNetworkSpec(ed, kp.secretKey, { ...unsigned, mtu: 1360, serial: 102 });
    const issued: Membership = { ...member, spec: v2 };
    const { lines, log } = logLines();
    // etcd holds an earlier spec than the issuer saw: refused, the certificate file's is used
    expect(chooseNetworkSpec(v1, null, issued, log)).toBe(v2);
    expect(lines[0]?.msg).toMatch(/keeping the last good spec from the certificate file/);
    expect(lines[0]?.err).toMatch(/serial 100, older than serial 101 in this host's certificate file \(\/test\/host\.cert\)/);
    // the same spec, or a newer one (the operator signed again after issuing), is taken silently
    expect(chooseNetworkSpec(v2, null, issued, log)).toBe(v2);
    expect(chooseNetworkSpec(v3, null, issued, log)).toBe(v3);
    expect(lines.length).toBe(1);
    // saved state and certificate file: the newer of the two is the floor
    expect(chooseNetworkSpec(v1, v3, issued, log)).toBe(v3); // ran on a later spec than it was issued under
    expect(lines[1]?.msg).toMatch(/from the saved state/);
    expect(chooseNetworkSpec(v1, v1, { ...member, spec: v3 }, log)).toBe(v3); // re-issued after the network was signed again
    expect(lines[2]?.msg).toMatch(/from the certificate file/);
    // the saved spec itself (etcd away at start) against a newer one in the certificate file
    const saved = v2;
    expect(chooseNetworkSpec(saved, saved, { ...member, spec: v3 }, log)).toBe(v3);
    // a certificate file's spec that does not verify is no floor
    expect(chooseNetworkSpec(v1, null, { ...member, spec: rewrite(v3, { serial: 999 }) }, log)).toBe(v1);
    expect(lines.length).toBe(4);
  });
});

describe('certified relays', () => {
  it('a certificate without relay keeps the canonical bytes it had before the field existed', async () => {
    const { member } = await fixture();
    const { version, network, name, publicKey, overlayIp, issued, notAfter, serial } = member.cert;
    const before = CERT_LABEL + JSON.stringify({ version, network, name, publicKey, overlayIp, issued, notAfter, serial });
    expect(Buffer.from(canonicalCert(member.cert)).toString()).toBe(before);
    expect(member.cert.relay).toBeUndefined();
  });

  it('host issue --relay puts relay in the signed certificate; adding or removing it breaks the signature', async () => {
    const { ed, kp, trust, member } = await fixture();
    const relayCert = issueCert(ed, kp.secretKey, { network: 'demo', name: 'relay-1', publicKey: X(2), overlayIp: '100.64.0.8', relay: true });
    expect(relayCert.relay).toBe(true);
    const parsed = parseHostCert(serializeHostCert(relayCert));
    expect(parsed.ok && parsed.value.relay).toBe(true);
    const now = Date.now();
    expect(trust.verifyCert(relayCert, now)).toBeNull();
    const granted = parseHostCert({ ...JSON.parse(serializeHostCert(member.cert)), relay: true });
    expect(granted.ok).toBe(true);
    if (granted.ok) expect(trust.verifyCert(granted.value, now)).toMatch(/signature/);
    const { relay: _dropped, ...withoutRelay } = JSON.parse(serializeHostCert(relayCert)) as Record<string, unknown>;
    const stripped = parseHostCert(withoutRelay);
    expect(stripped.ok).toBe(true);
    if (stripped.ok) expect(trust.verifyCert(stripped.value, now)).toMatch(/signature/);
    expect(parseHostCert({ ...JSON.parse(serializeHostCert(member.cert)), relay: false }).ok).toBe(false);
  });

  it('peers use a host as a relay only when its record says so and its certificate allows it', async () => {
    const { ed, kp, member } = await fixture();
    const relayCert = issueCert(ed, kp.secretKey, { network: 'demo', name: 'relay-1', publicKey: X(2), overlayIp: '100.64.0.8', relay: true });
    const rec = (cert: HostRecord['cert'], relay?: boolean): HostRecord => ({
      version: 1, name: cert!.name, network: 'demo', overlayIp: cert!.overlayIp, publicKey: cert!.publicKey,
      endpoints: ['198.18.1.2:51820'], hostCidrs: [], listenPort: 51820, epoch: 1, updated: '2026-12-01T00:00:00.000Z',
      session: '0123456789abcdef', cert, ...(relay === undefined ? {} : { relay }),
    });
    expect(mayRelay(rec(relayCert, true))).toBe(true);
    expect(mayRelay(rec(relayCert))).toBe(false); // the host does not offer it
    expect(mayRelay(rec(member.cert, true))).toBe(false); // an etcd writer set the flag
  });

});
