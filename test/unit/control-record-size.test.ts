import { beforeAll, describe, expect, it } from 'vitest';
import { issueCert, signRevocation } from '../../src/control/cert';
import {
  checkRecordSize,
  HostRecord,
  MAX_ENDPOINTS,
  MAX_GROUPS,
  MAX_HOST_CIDRS,
  MAX_ROUTES,
  parseHostRecord,
  parseLeaseRecord,
  parseNetworkSpec,
  parseRevocationRecord,
  RECORD_CAPS,
  recordSizeError,
  serializeHostRecord,
  serializeLeaseRecord,
  serializeNetworkSpec,
  serializeRevocationRecord,
} from '../../src/control/records';
import { CladnetError } from '../../src/errors';
import { loadEd25519, type Ed25519, type SigningKeyPair } from '../../src/crypto/sign';

/** The per-type size caps: the largest valid records fit with headroom; one byte over is refused on write and on read. */

let ed: Ed25519;
let net: SigningKeyPair;
const NAME63 = `h${'x'.repeat(61)}z`; // the longest valid name
const NET63 = `n${'y'.repeat(61)}z`;
const KEY = Buffer.alloc(32, 9).toString('base64');

beforeAll(async () => {
  ed = await loadEd25519();
  net = ed.generate();
});

/** The largest host record the validators accept (with its certificate), serialized as publish writes it. */
function largestHost(): HostRecord {
  // the longest prefixes there are ("198.18.100.128/25"), as many as a certificate and a record may carry
  const routes = Array.from({ length: MAX_ROUTES }, (_, i) => `198.18.${100 + i}.128/25`);
  const groups = Array.from({ length: MAX_GROUPS }, (_, i) => `g${i}`.padEnd(32, 'x')); // the most, the longest
  const cert = issueCert(ed, net.secretKey, { network: NET63, name: NAME63, publicKey: KEY, overlayIp: '100.127.255.254', now: new Date('2026-12-02T11:00:00.123Z'), routes, groups });
  return {
    version: 1,
    name: NAME63,
    network: NET63,
    overlayIp: '100.127.255.254',
    publicKey: KEY,
    endpoints: Array.from({ length: MAX_ENDPOINTS }, (_, i) => `198.19.${100 + i}.255:65535`),
    hostCidrs: Array.from({ length: MAX_HOST_CIDRS }, (_, i) => `198.18.${100 + i}.128/25`),
    listenPort: 65535,
    epoch: Number.MAX_SAFE_INTEGER,
    updated: '2026-12-02T11:00:00.123Z',
    session: '0123456789abcdef',
    relay: true,
    nat: 'unknown',
    reflexive: '198.18.255.255:65535',
    routes,
    cert,
  };
}

/** A valid serialized record padded with an unknown field to exactly `bytes` bytes. */
function paddedTo(json: string, bytes: number): string {
  const head = `${json.slice(0, -1)},"pad":"`;
  const out = `${head}${'p'.repeat(bytes - Buffer.byteLength(head) - 2)}"}`;
  expect(Buffer.byteLength(out)).toBe(bytes);
  return out;
}

describe('record size caps', () => {
  it('the largest valid host record fits the 8 KiB cap with more than 2x headroom', () => {
    const text = serializeHostRecord(largestHost());
    const size = Buffer.byteLength(text);
    console.log(`largest valid host record: ${size} bytes (cap ${RECORD_CAPS.host})`);
    expect(parseHostRecord(text).ok).toBe(true);
    expect(size * 2).toBeLessThan(RECORD_CAPS.host);
    expect(recordSizeError('host', text)).toBeNull();
  });

  it('a host record of exactly the cap parses; one byte more is refused before parsing', () => {
    const text = serializeHostRecord(largestHost());
    expect(parseHostRecord(paddedTo(text, RECORD_CAPS.host)).ok).toBe(true);
    const over = parseHostRecord(paddedTo(text, RECORD_CAPS.host + 1));
    expect(over).toEqual({ ok: false, error: `record is ${RECORD_CAPS.host + 1} bytes, more than ${RECORD_CAPS.host}` });
    // As a Buffer too (what etcd hands over), and a 1.5 MiB stuffed value.
    expect(parseHostRecord(Buffer.from(paddedTo(text, 1_500_000))).ok).toBe(false);
  });

  it('checkRecordSize refuses an oversized write with ERECORD, field "size"', () => {
    const text = paddedTo(serializeHostRecord(largestHost()), RECORD_CAPS.host + 1);
    let err: unknown;
    try {
      checkRecordSize('host', text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CladnetError);
    expect(err).toMatchObject({ code: 'ERECORD', field: 'size', transient: false });
    expect(() => checkRecordSize('host', serializeHostRecord(largestHost()))).not.toThrow();
    expect(() => checkRecordSize('alive', 'a'.repeat(RECORD_CAPS.alive + 1))).toThrow(/alive record is 1025 bytes, more than 1024/);
  });

  it('revocations, leases and specs: the largest valid ones fit, one byte over the cap is refused', () => {
    const rev = serializeRevocationRecord(signRevocation(ed, net.secretKey, { network: NET63, name: NAME63, serial: 'f'.repeat(32), now: new Date('2026-12-02T11:00:00.123Z') }));
    const lease = serializeLeaseRecord({ version: 1, host: NAME63, publicKey: KEY, created: '2026-12-02T11:00:00.123Z' });
    const spec = serializeNetworkSpec({
      version: 1,
      name: NET63,
      cidr: '100.64.0.0/10',
      mtu: 9000,
      port: 65535,
      created: '2026-12-02T11:00:00.123Z',
      trustAnchor: KEY,
    });
    console.log(`largest revocation ${Buffer.byteLength(rev)} B, lease ${Buffer.byteLength(lease)} B, spec ${Buffer.byteLength(spec)} B`);
    const cases = [
      { text: rev, cap: RECORD_CAPS.revoked, parse: (s: string) => parseRevocationRecord(s) },
      { text: lease, cap: RECORD_CAPS.lease, parse: (s: string) => parseLeaseRecord(s) },
      { text: spec, cap: RECORD_CAPS.network, parse: (s: string) => parseNetworkSpec(s) },
    ];
    for (const c of cases) {
      expect(c.parse(c.text).ok).toBe(true);
      expect(Buffer.byteLength(c.text) * 2).toBeLessThan(c.cap);
      expect(c.parse(paddedTo(c.text, c.cap)).ok).toBe(true);
      expect(c.parse(paddedTo(c.text, c.cap + 1))).toEqual({ ok: false, error: `record is ${c.cap + 1} bytes, more than ${c.cap}` });
    }
  });
});
