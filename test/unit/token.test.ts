import { beforeAll, describe, expect, it } from 'vitest';
import { issueCert, signGrant, signNetworkSpec, signTokenRevocation, type TrustAnchor } from '../../src/control/cert';
import { checkTokenScope } from '../../src/control/enroll';
import { matchesNamePattern, parseKey, tokenUseKey } from '../../src/control/keys';
import { computePeers, type PeerInputs, type PeerTrust } from '../../src/control/peers';
import { parseHostCert, parseHostRecord, serializeHostCert, serializeHostRecord, type HostCert, type TokenGrant } from '../../src/control/records';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { decodeToken, encodeToken, parseDuration, readTokenFile, TOKEN_PREFIX, wipeTokenFile, type JoinToken } from '../../src/control/token';
import { TokenMemory } from '../../src/control/token-memory';
import { loadAgentConfig } from '../../src/config/config';
import { CladnetError } from '../../src/errors';
import type { Ed25519, SigningKeyPair } from '../../src/crypto/sign';
import { parsePrefix } from '../../src/util/ipv4';
import { DAY, hostEntry, hostRecord, T0, trustFixture, X, type TrustFixture } from '../helpers/trust';

/** Join tokens: the token string, the chain network key -> grant -> certificate, scope, and the peer computation's rules. */

let ed: Ed25519;
let net: SigningKeyPair;
let anchor: TrustAnchor;
let certFor: TrustFixture['certFor'];
let delegate: SigningKeyPair;
let grant: TokenGrant;
let token: JoinToken;

const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64');

function makeGrant(over: Partial<Parameters<typeof signGrant>[2]> = {}, key = net.secretKey, d = delegate): TokenGrant {
  return signGrant(ed, key, { network: 'demo', names: 'web-*', uses: 2, ttlMs: 3_600_000, certDays: 30, delegateKey: b64(d.publicKey), now: new Date(T0), ...over });
}

/** A certificate for web-N under `g` (use `use`), made at `at`, signed by `key` (the delegate by default). */
function tokenCert(name: string, use: number, o: { g?: TokenGrant; key?: Uint8Array; at?: number; ip?: string; pub?: string } = {}): HostCert {
  return issueCert(ed, o.key ?? delegate.secretKey, {
    network: 'demo',
    name,
    publicKey: o.pub ?? X(name.charCodeAt(name.length - 1)),
    overlayIp: o.ip ?? `100.64.0.${10 + use}`,
    now: new Date(o.at ?? T0 + 60_000),
    token: { grant: o.g ?? grant, use },
  });
}

beforeAll(async () => {
  const fx = await trustFixture();
  ({ ed, net, anchor, certFor } = fx);
  delegate = ed.generate();
  grant = makeGrant();
  token = { trustAnchor: anchor.publicKey, grant, secret: delegate.secretKey };
});

/** `CODE message` of what `f` throws, or 'accepted'. */
function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return `${(e as CladnetError).code} ${(e as Error).message}`;
  }
  return 'accepted';
}

describe('the token string', () => {
  it('round-trips and checks its own chain', () => {
    const s = encodeToken(token);
    expect(s.startsWith(TOKEN_PREFIX)).toBe(true);
    expect(s).toMatch(/^cladnet-token-v1\.[A-Za-z0-9_-]+$/);
    const t = decodeToken(`  ${s}\n`, ed);
    expect(t.grant).toEqual(grant);
    expect(t.trustAnchor).toBe(anchor.publicKey);
    expect(Buffer.from(t.secret).equals(Buffer.from(delegate.secretKey))).toBe(true);
  });

  it('refuses garbage, a cut token, a grant not signed by the anchor it carries, and a secret that is not the delegate key', () => {
    expect(code(() => decodeToken('hello', ed))).toMatch(/^ETOKEN token: does not start with/);
    const s = encodeToken(token);
    expect(code(() => decodeToken(s.slice(0, s.length - 40), ed))).toMatch(/^ETOKEN /);
    const other = ed.generate();
    const forged = makeGrant({}, other.secretKey);
    expect(code(() => decodeToken(encodeToken({ ...token, grant: forged }), ed))).toMatch(/^ETOKEN token: grant\.signature: not signed/);
    expect(code(() => decodeToken(encodeToken({ ...token, secret: other.secretKey }), ed))).toMatch(/^ETOKEN token: secret: is not the grant's delegate key/);
  });

  it('carries the network spec it was made under; a spec the anchor did not sign, or garbled, is refused naming it', () => {
    const unsigned = { version: 1 as const, name: 'demo', cidr: '100.64.0.0/24', mtu: 1380, port: 51820, created: new Date(T0).toISOString(), trustAnchor: anchor.publicKey, serial: 7 };
    const spec = signNetworkSpec(ed, net.secretKey, unsigned);
    const t = decodeToken(encodeToken({ ...token, spec }), ed);
    expect(t.spec).toEqual(spec);
    expect(decodeToken(encodeToken(token), ed).spec).toBeUndefined(); // a token made before it existed
    const other = ed.generate();
    expect(code(() => decodeToken(encodeToken({ ...token, spec: signNetworkSpec(ed, other.secretKey, unsigned) }), ed))).toMatch(/^ETOKEN token: spec\.signature: /);
    expect(code(() => decodeToken(encodeToken({ ...token, spec: { ...spec, mtu: 1420 } }), ed))).toMatch(/^ETOKEN token: spec\.signature: /);
    expect(code(() => decodeToken(encodeToken({ ...token, spec: { ...spec, mtu: 99 } }), ed))).toMatch(/^ETOKEN token: spec\.mtu: /);
    expect(code(() => decodeToken(encodeToken({ ...token, spec: { ...spec, name: 'other' } }), ed))).toMatch(/^ETOKEN token: spec\.name: /);
  });

  it('parses durations and refuses bad ones, naming the field', () => {
    expect(parseDuration('90s', 'ttl')).toBe(90_000);
    expect(parseDuration('2h', 'ttl')).toBe(7_200_000);
    expect(parseDuration('7d', 'ttl')).toBe(7 * DAY);
    for (const bad of ['', '1', '1w', '-1h', '0m', '1.5h']) expect(() => parseDuration(bad, 'ttl'), bad).toThrow(/^ttl: /);
  });
});

describe('name patterns', () => {
  it('* is any run of name characters; the rest is literal', () => {
    expect(matchesNamePattern('web-*', 'web-1')).toBe(true);
    expect(matchesNamePattern('web-*', 'web-')).toBe(true);
    expect(matchesNamePattern('web-*', 'db-1')).toBe(false);
    expect(matchesNamePattern('web-*', 'xweb-1')).toBe(false);
    expect(matchesNamePattern('*', 'anything-9')).toBe(true);
    expect(matchesNamePattern('a*b', 'a-x-b')).toBe(true);
    expect(matchesNamePattern('a*b', 'a-x-bc')).toBe(false);
    expect(matchesNamePattern('web-1', 'web-1')).toBe(true);
    expect(matchesNamePattern('web-1', 'web-10')).toBe(false);
    expect(matchesNamePattern('web.*', 'webx1')).toBe(false); // not a pattern at all
  });
});

describe('scope checks at enrolment (offline)', () => {
  const scope = (o: { network?: string; name?: string }, now = T0 + 60_000) => {
    try {
      checkTokenScope(token, { network: o.network ?? 'demo', name: o.name ?? 'web-1' }, now);
      return 'ok';
    } catch (e) {
      return (e as CladnetError).code;
    }
  };
  it('each refusal has its own code', () => {
    expect(scope({})).toBe('ok');
    expect(scope({ network: 'other' })).toBe('ETOKEN');
    expect(scope({ name: 'db-1' })).toBe('ETOKENSCOPE');
    expect(scope({}, Date.parse(grant.notAfter) + 1)).toBe('ETOKENEXPIRED');
  });
});

describe('certificates under a token: the chain and the scope', () => {
  const now = T0 + 2 * 60_000;
  it('verifies network key -> grant -> certificate, and survives serialization in a host record', () => {
    const c = tokenCert('web-1', 1);
    expect(c.token).toBe(grant.id);
    expect(c.use).toBe(1);
    expect(anchor.verifyCert(c, now)).toBeNull();
    const back = parseHostCert(serializeHostCert(c));
    expect(back.ok && anchor.verifyCert(back.value, now)).toBeNull();
    const rec = parseHostRecord(serializeHostRecord(hostRecord('web-1', c, { publicKey: c.publicKey, overlayIp: c.overlayIp })));
    expect(rec.ok && anchor.checkRecord(rec.value, now)).toBeNull();
  });

  it('refuses a certificate outside the grant: a use beyond --uses, a name outside the pattern, made after expiry, too long, a relay', () => {
    // Someone who holds the delegate key signs by hand, past the checks issueCert makes.
    const sign = (c: HostCert, over: Partial<HostCert>): HostCert => {
      const unsigned = { ...c, ...over, signature: undefined };
      delete unsigned.signature;
      const bytes = new TextEncoder().encode(
        `cladnet token host certificate v1\n${JSON.stringify({
          version: 1,
          network: unsigned.network,
          name: unsigned.name,
          publicKey: unsigned.publicKey,
          overlayIp: unsigned.overlayIp,
          issued: unsigned.issued,
          notAfter: unsigned.notAfter,
          serial: unsigned.serial,
          relay: unsigned.relay,
          token: unsigned.token,
          use: unsigned.use,
        })}`,
      );
      return { ...c, ...over, signature: b64(ed.sign(bytes, delegate.secretKey)) };
    };
    const c = tokenCert('web-1', 1);
    expect(anchor.verifyCert(sign(c, {}), now)).toBeNull(); // the hand signer is right
    expect(anchor.verifyCert(sign(c, { use: 3 }), now)).toMatch(/^cert\.use: 3 is beyond the token's 2 use/);
    expect(anchor.verifyCert(sign(c, { name: 'db-1' }), now)).toMatch(/^cert\.name: "db-1" is outside the token's pattern/);
    const late = new Date(Date.parse(grant.notAfter) + 1000);
    expect(anchor.verifyCert(sign(c, { issued: late.toISOString(), notAfter: new Date(late.getTime() + DAY).toISOString() }), late.getTime())).toMatch(
      /^cert\.issued: .* is after the token expired/,
    );
    expect(anchor.verifyCert(sign(c, { notAfter: new Date(T0 + 31 * DAY).toISOString() }), now)).toMatch(/longer than the token's 30 day/);
    expect(anchor.verifyCert(sign(c, { relay: true }), now)).toMatch(/cannot certify a relay/);
    // issueCert refuses the same up front, with the token's codes.
    expect(() => tokenCert('web-1', 3)).toThrow(expect.objectContaining({ code: 'ETOKENUSEDUP' }));
    expect(() => tokenCert('db-1', 1)).toThrow(expect.objectContaining({ code: 'ETOKENSCOPE' }));
  });

  it('refuses a certificate signed by another key, a grant not signed by the network key, and a network-key signature on a token certificate', () => {
    const c = tokenCert('web-1', 1);
    const thief = ed.generate();
    expect(anchor.verifyCert(tokenCert('web-1', 1, { key: thief.secretKey }), now)).toMatch(/^cert\.signature: not signed by the delegate key/);
    // A grant naming the thief's key, signed by the thief: the network key did not sign it.
    const fake = makeGrant({ id: grant.id }, thief.secretKey, thief);
    expect(anchor.verifyCert(tokenCert('web-1', 1, { g: fake, key: thief.secretKey }), now)).toMatch(/^cert\.grant\.signature: not signed by this network's key/);
    // The network key signing the delegate's canonical bytes is no use: the delegate key decides.
    expect(anchor.verifyCert(tokenCert('web-1', 1, { key: net.secretKey }), now)).toMatch(/^cert\.signature: not signed by the delegate key/);
    // A token certificate stripped of its token fields no longer verifies as a network-key certificate.
    const { token: _t, use: _u, grant: _g, ...plain } = c;
    expect(anchor.verifyCert(plain as HostCert, now)).toMatch(/^cert\.signature: not signed by this network's key/);
    // A grant swapped for another genuine one (other id) does not match the certificate.
    const g2 = makeGrant();
    expect(anchor.verifyCert({ ...c, grant: g2 }, now)).toMatch(/^cert\.grant\.id: /);
  });
});

describe('the peer computation: first certificate per (token, use), token revocations, no takeover', () => {
  const now = T0 + 2 * 60_000;
  const rec = (c: HostCert) => hostRecord(c.name, c, { publicKey: c.publicKey, overlayIp: c.overlayIp });
  function inputs(certs: HostCert[], trust: Partial<PeerTrust> = {}): PeerInputs {
    const records = [hostRecord('me', certFor('me')), ...certs.map(rec)];
    return {
      self: 'me',
      cidr: parsePrefix('100.64.0.0/24')!,
      cidrText: '100.64.0.0/24',
      hosts: new Map(records.map((r) => [r.name, hostEntry(r)])),
      alive: new Set(records.map((r) => r.name)),
      leases: new Map(),
      trust: { anchor, now, revocations: new Map(), selfCert: certFor('me'), ...trust },
    };
  }

  it('a second certificate for a use already seen is refused, whatever etcd holds (sticky)', () => {
    const mem = new TokenMemory();
    const first = tokenCert('web-1', 1);
    const out1 = computePeers(inputs([first], { tokens: mem }));
    expect([...out1.peers.keys()]).toEqual(['web-1']);
    mem.bind(out1.certified);
    // The token leaks; the thief signs use 1 for its own key and name, earlier-dated (it can).
    const stolen = tokenCert('web-7', 1, { at: T0, ip: '100.64.0.30', pub: X(77) });
    const out2 = computePeers(inputs([stolen], { tokens: mem })); // web-1's record deleted from etcd
    expect(out2.peers.has('web-7')).toBe(false);
    expect(out2.rejected.find((r) => r.name === 'web-7')?.error).toMatch(/use 1 of token .* was first taken by certificate/);
    // The unused use 2 is still open (what a leaked token is still worth: docs/security.md).
    const second = tokenCert('web-8', 2, { pub: X(88) });
    expect(computePeers(inputs([first, stolen, second], { tokens: mem })).peers.has('web-8')).toBe(true);
  });

  it('two unseen certificates for one use: one wins, the other is refused; the memory survives a reload', () => {
    const a = tokenCert('web-1', 1);
    const b = tokenCert('web-2', 1, { ip: '100.64.0.40', pub: X(22), at: T0 + 90_000 });
    const mem = new TokenMemory();
    const out = computePeers(inputs([a, b], { tokens: mem }));
    expect([...out.peers.keys()]).toEqual(['web-1']);
    expect(out.certified.map((c) => c.name)).not.toContain('web-2');
    mem.bind(out.certified);
    const again = new TokenMemory();
    again.load(JSON.parse(JSON.stringify(mem.toJSON())), anchor);
    expect(computePeers(inputs([b], { tokens: again })).peers.size).toBe(0);
  });

  it('our own use is ours: a record claiming it is refused', () => {
    const mine = tokenCert('web-1', 1, { pub: X(1) });
    const mem = new TokenMemory();
    mem.bind([mine]);
    const thief = tokenCert('web-9', 1, { pub: X(99), ip: '100.64.0.50' });
    const i = inputs([thief], { tokens: mem, selfCert: mine });
    const out = computePeers({ ...i, self: 'web-1', hosts: new Map([['web-9', hostEntry(rec(thief))]]), alive: new Set(['web-9']) });
    expect(out.peers.size).toBe(0);
    expect(out.selfProblem).toBeUndefined();
  });

  it('a revoked token takes every certificate under it but the kept ones; our own too', () => {
    const a = tokenCert('web-1', 1);
    const b = tokenCert('web-2', 2, { pub: X(22) });
    const mem = new TokenMemory();
    const rev = signTokenRevocation(ed, net.secretKey, { network: 'demo', token: grant.id, keep: [a.serial], now: new Date(now) });
    expect(anchor.verifyTokenRevocation(rev)).toBeNull();
    expect(mem.addRevocation(rev)).toBe(true);
    const out = computePeers(inputs([a, b], { tokens: mem }));
    expect([...out.peers.keys()]).toEqual(['web-1']);
    expect(out.rejected.find((r) => r.name === 'web-2')).toMatchObject({ trust: 'revoked' });
    // A forged revocation (not the network key) is refused by the anchor.
    const forged = signTokenRevocation(ed, delegate.secretKey, { network: 'demo', token: grant.id, keep: [] });
    expect(anchor.verifyTokenRevocation(forged)).toMatch(/^signature: /);
    // Our own certificate under a revoked token: no peers.
    const mem2 = new TokenMemory();
    mem2.addRevocation(signTokenRevocation(ed, net.secretKey, { network: 'demo', token: grant.id, keep: [] }));
    const self = tokenCert('web-1', 1, { pub: X(1) });
    const i = inputs([certFor('a')].map((c) => c), { tokens: mem2, selfCert: self });
    const mine = computePeers({ ...i, self: 'web-1' });
    expect(mine.selfProblem).toMatch(/^our own certificate was revoked with its join token .* at /);
  });

  it('a token certificate cannot take over a name another key holds', () => {
    const held = certFor('a'); // 'a', network key, issued T0
    const g = makeGrant({ names: '*' });
    const takeover = issueCert(ed, delegate.secretKey, { network: 'demo', name: 'a', publicKey: X(200), overlayIp: '100.64.0.60', now: new Date(T0 + 60_000), token: { grant: g, use: 1 } });
    expect(anchor.verifyCert(takeover, now)).toBeNull();
    const out = computePeers(inputs([takeover], { tokens: new TokenMemory(), knownCerts: [held] }));
    expect(out.peers.has('a')).toBe(false);
    expect(out.rejected.find((r) => r.name === 'a')?.error).toMatch(/cannot take over a host/);
  });

  it('nor a name an earlier token host holds, even on an unused use and back-dated', () => {
    const first = tokenCert('web-1', 1);
    const mem = new TokenMemory();
    const out1 = computePeers(inputs([first], { tokens: mem, knownCerts: [] }));
    mem.bind(out1.certified);
    const known = [...out1.certified];
    const thief = tokenCert('web-1', 2, { pub: X(123), at: T0, ip: '100.64.0.70' }); // earlier issued than the first
    const out2 = computePeers(inputs([thief], { tokens: mem, knownCerts: known }));
    expect(out2.peers.has('web-1')).toBe(false);
    expect(out2.rejected.find((r) => r.name === 'web-1')?.error).toMatch(/held by certificate .* of another key; a join token cannot take over a host/);
    // The first host itself is still fine with the same memory.
    expect(computePeers(inputs([first], { tokens: mem, knownCerts: known })).peers.has('web-1')).toBe(true);
  });
});

describe('etcd keys of tokens', () => {
  it('builds and parses the use key', () => {
    const k = tokenUseKey('demo', grant.id, 7);
    expect(parseKey(k)).toEqual({ kind: 'tokenUse', network: 'demo', token: grant.id, use: 7 });
    expect(parseKey(k.replace('-7', '-07'))).toBeNull();
    expect(() => tokenUseKey('demo', 'nope', 1)).toThrow(/token: "nope" is not a token id/);
  });
});

describe('agent settings', () => {
  it('token and tokenFile come from flags, CLADNET_TOKEN / CLADNET_TOKEN_FILE or the file; both at once are refused', () => {
    const base = { network: 'demo', name: 'web-1' };
    expect(loadAgentConfig({ env: { CLADNET_TOKEN_FILE: '/var/lib/cladnet/join.token' }, flags: base }).tokenFile).toBe('/var/lib/cladnet/join.token');
    expect(loadAgentConfig({ env: { CLADNET_TOKEN: 'cladnet-token-v1.abc' }, flags: base }).token).toBe('cladnet-token-v1.abc');
    const none = loadAgentConfig({ env: {}, flags: base });
    expect([none.token, none.tokenFile]).toEqual([undefined, undefined]);
    expect(() => loadAgentConfig({ env: { CLADNET_TOKEN: 'x' }, flags: { ...base, tokenFile: '/f' } })).toThrow(/config: token: give token or tokenFile, not both/);
  });
});

describe('the token file', () => {
  it('must be 0600; once used it is overwritten and removed', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-token-'));
    try {
      const f = path.join(dir, 'join.token');
      fs.writeFileSync(f, `${encodeToken(token)}\n`, { mode: 0o644 });
      fs.chmodSync(f, 0o644);
      expect(() => readTokenFile(f)).toThrow(expect.objectContaining({ code: 'ETOKEN', field: 'tokenFile' }));
      fs.chmodSync(f, 0o600);
      expect(decodeToken(readTokenFile(f), ed).grant.id).toBe(grant.id);
      const link = path.join(dir, 'same-inode');
      fs.linkSync(f, link); // a second name for the file shows what wiping did to its bytes
      expect(wipeTokenFile(f)).toBeNull();
      expect(fs.existsSync(f)).toBe(false);
      const left = fs.readFileSync(link);
      expect(left.length).toBeGreaterThan(100);
      expect(left.every((b) => b === 0)).toBe(true);
      expect(wipeTokenFile(f)).toBeNull(); // already gone: nothing to do
      expect(() => readTokenFile(f)).toThrow(/tokenFile: cannot read/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
