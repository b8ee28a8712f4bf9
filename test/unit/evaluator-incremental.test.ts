import { beforeAll, describe, expect, it } from 'vitest';
import { issueCert, signGrant, signTokenRevocation } from '../../src/control/cert';
import { MemberEvaluator, type Mirror } from '../../src/control/evaluator';
import type { HostEntry } from '../../src/control/peers';
import { serializeHostRecord, type HostCert, type HostRecord } from '../../src/control/records';
import { Revocations } from '../../src/control/revocations';
import { createRootLogger } from '../../src/log';
import { parsePrefix } from '../../src/util/ipv4';
import { rng } from '../helpers/rng';
import { DAY, hostEntry, hostRecord, T0, trustFixture, type TrustFixture } from '../helpers/trust';

/**
 * The evaluator's partial evaluations (only the names etcd changed) must agree with a full one
 * after every step: random records, address clashes (earlier and later certificates, our own
 * address included), stale and garbage records, deletes, alive keys and byes, over a few
 * addresses so that conflicts are common.
 */

let fx: TrustFixture;
const log = createRootLogger('silent');
const NAMES = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];
const IPS = ['100.64.0.1', '100.64.0.2', '100.64.0.3', '100.64.0.4', '100.64.0.5'];

beforeAll(async () => {
  fx = await trustFixture();
});

function key(name: string): string {
  return Buffer.alloc(32, name.charCodeAt(0)).toString('base64');
}

interface Variant {
  /** Records carry join-token certificates too (several tokens, shared uses, thieves, takeovers, token revocations). */
  tokens: boolean;
  /** Our own certificate comes from a token. */
  selfToken: boolean;
  /** The memories start (as from a cache file) with a remembered certificate whose use is bound to another one. */
  preload: boolean;
}

/**
 * Three evaluators see the same etcd: `partial` is told only the names that changed, `full`
 * evaluates everything every time (its own path), `ref` goes through computePeers every time.
 * After every step all three must agree. Steps change one to three names at once (the registry
 * hands over the names of a whole batch).
 */
function runRandom(seed: number, v: Variant): { partial: MemberEvaluator; tokenMembers: number; refused: { firstPerUse: number; useTaken: number; nameTaken: number } } {
  const rand = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rand() * a.length)]!;
  const now = T0 + DAY;
  const HOUR = 3_600_000;
  // serials from the seed too (they break ties between certificates issued at one moment): reproducible runs
  const serial = () => Array.from({ length: 4 }, () => Math.floor(rand() * 2 ** 32).toString(16).padStart(8, '0')).join('');
  const delegates = [fx.ed.generate(), fx.ed.generate(), fx.ed.generate()];
  const grants = delegates.map((d) =>
    signGrant(fx.ed, fx.net.secretKey, { network: 'demo', names: '*', uses: 500, ttlMs: 48 * HOUR, certDays: 30, delegateKey: Buffer.from(d.publicKey).toString('base64'), now: new Date(T0 - 12 * HOUR) }),
  );
  const stranger = fx.ed.generate(); // signs with no grant's delegate key: untrusted
  const tokenCert = (g: number, use: number, name: string, publicKey: string, overlayIp: string, at: number, signer = delegates[g]!.secretKey) =>
    issueCert(fx.ed, signer, { network: 'demo', name, publicKey, overlayIp, validDays: 30, now: new Date(at), serial: serial(), token: { grant: grants[g]!, use } });
  // grants[2] is our own token's (use 1 is ours; others sign for it too)
  // (with tokens our certificate is the earliest: it keeps its address, so we keep our peers)
  const selfCert = v.selfToken
    ? tokenCert(2, 1, 'me', key('m'), IPS[0]!, T0 - 11 * HOUR)
    : issueCert(fx.ed, fx.net.secretKey, { network: 'demo', name: 'me', publicKey: key('m'), overlayIp: IPS[0]!, now: new Date(v.tokens ? T0 - 11 * HOUR : T0), serial: serial() });
  // What the reference saw refused by the token rules (warned once per record): the test's coverage.
  const refused = { firstPerUse: 0, useTaken: 0, nameTaken: 0 };
  const refLog = createRootLogger('warn', {
    write: (line: string) => {
      const e = String((JSON.parse(line) as { error?: unknown }).error ?? '');
      if (e.includes('is also claimed by certificate')) refused.firstPerUse++;
      if (e.includes('was first taken by')) refused.useTaken++;
      if (e.includes('cannot take over a host')) refused.nameTaken++;
    },
  });
  const make = (viaComputePeers: boolean) => {
    const ev = new MemberEvaluator({
      self: 'me',
      cidr: parsePrefix('100.64.0.0/24')!,
      cidrText: '100.64.0.0/24',
      network: 'demo',
      log: viaComputePeers ? refLog : log,
      revocations: new Revocations('demo', log),
      selfCert,
      heardAt: (n) => (n.charCodeAt(0) % 2 === 0 ? now - 1000 : 0),
      onTimer: () => undefined,
      viaComputePeers,
    });
    ev.trust = fx.anchor;
    if (v.preload) {
      // A cache file remembered x's certificate for use 2 of token 0, but bound that use to another certificate.
      ev.knownCerts.remember([early]);
      ev.tokens.bind([other]);
    }
    return ev;
  };
  const early = tokenCert(0, 2, 'x', key('x'), IPS[2]!, T0 - 12 * HOUR);
  const other = tokenCert(0, 2, 'y', key('y'), IPS[3]!, T0 - 12 * HOUR);
  const evs = [make(false), make(false), make(true)] as const;
  const [partial, full, ref] = evs;
  const hosts = new Map<string, HostEntry>();
  const alive = new Set<string>();
  const m: Mirror = { hosts, alive, leases: new Map(), etcdRead: true };
  const certs = new Map<string, HostCert>();
  const epochs = new Map<string, number>();
  const issuedUnder: string[][] = grants.map(() => []);
  let rev = 10;
  let tokenMembers = 0;
  for (const ev of evs) ev.evaluate(m, now, null);
  const shape = (ev: MemberEvaluator) => [...ev.members()].map(([n, r]) => `${n}:${serializeHostRecord(r)}`).sort();
  const memory = (ev: MemberEvaluator) => ({
    uses: [...ev.tokens.uses].map((e) => e.join('=')).sort(),
    certs: NAMES.map((n) => [...ev.knownCerts.named(n)].map((c) => c.serial)),
  });
  const fresh = grants.map(() => 5); // uses 1..4 are picked at random; from 5 on, each a new one
  const newCert = (name: string, race?: { g: number; use: number }): HostCert => {
    const ip = pick(IPS);
    const at = T0 - Math.floor(rand() * 10) * HOUR;
    if (!race && (!v.tokens || rand() < 0.35)) return issueCert(fx.ed, fx.net.secretKey, { network: 'demo', name, publicKey: key(name), overlayIp: ip, now: new Date(at), serial: serial() });
    const g = race?.g ?? Math.floor(rand() * grants.length);
    const use = race?.use ?? 1 + Math.floor(rand() * 4);
    // now and then another key for the name (a takeover), or a signer the grant does not name
    const pub = rand() < 0.25 ? key(name.toUpperCase()) : key(name);
    const c = tokenCert(g, use, name, pub, ip, at, rand() < 0.05 ? stranger.secretKey : undefined);
    issuedUnder[g]!.push(c.serial);
    return c;
  };
  for (let step = 0; step < 300; step++) {
    const touched: string[] = [];
    if (v.tokens && rand() < 0.006) {
      // A token revocation (keeping some of its certificates): the registry evaluates in full.
      const g = Math.floor(rand() * 2); // never our own token's (we would have no peers from then on)
      const revocation = signTokenRevocation(fx.ed, fx.net.secretKey, { network: 'demo', token: grants[g]!.id, keep: issuedUnder[g]!.filter(() => rand() < 0.5) });
      for (const ev of evs) expect(ev.tokens.addRevocation(revocation)).toBe(true);
      for (const ev of evs) ev.evaluate(m, now, null);
    }
    const ops = rand() < 0.35 ? 2 + Math.floor(rand() * 2) : 1;
    // A race: two or three hosts publish certificates for one use not seen before, in one batch.
    const race = v.tokens && rand() < 0.1 ? { g: Math.floor(rand() * 2), use: 0 } : undefined;
    if (race) race.use = fresh[race.g]!++;
    for (let k = 0; k < (race ? ops + 1 : ops); k++) {
      const name = pick(NAMES);
      const op = race ? 0 : rand();
      if (op < 0.45) {
        // a record: sometimes a new certificate (another address, issued earlier or later)
        let cert = certs.get(name);
        if (!cert || race || rand() < 0.3) certs.set(name, (cert = newCert(name, race)));
        const epoch = (epochs.get(name) ?? 10) + (rand() < 0.15 ? -1 : 1); // sometimes a replayed older one
        epochs.set(name, Math.max(epoch, epochs.get(name) ?? 0));
        const rec: HostRecord = {
          version: 1,
          name,
          network: 'demo',
          overlayIp: cert.overlayIp,
          publicKey: cert.publicKey,
          endpoints: [`198.18.0.${1 + Math.floor(rand() * 200)}:51820`],
          hostCidrs: [],
          listenPort: 51820,
          epoch,
          updated: '2026-11-21T00:00:00.000Z',
          session: '0123456789abcdef',
          cert,
        };
        hosts.set(name, hostEntry(rec, String(rev++)));
        if (rand() < 0.6) alive.add(name);
        touched.push(name);
      } else if (op < 0.55) {
        hosts.set(name, { modRevision: String(rev++), parsed: { ok: false, error: 'not JSON' } });
        touched.push(name);
      } else if (op < 0.65) {
        hosts.delete(name);
        touched.push(name);
      } else if (op < 0.85) {
        if (alive.has(name)) alive.delete(name);
        else alive.add(name);
        touched.push(name);
      } else {
        const a = partial.bye(name); // the bye is the evaluator's own news: not in `touched`
        expect(full.bye(name)).toBe(a);
        expect(ref.bye(name)).toBe(a);
      }
    }
    partial.evaluate(m, now, touched);
    full.evaluate(m, now, null);
    ref.evaluate(m, now, null);
    for (const ev of [partial, full]) {
      expect(shape(ev), `step ${step}`).toEqual(shape(ref));
      expect(ev.addressConflicts(), `step ${step}`).toEqual(ref.addressConflicts());
      for (const n of NAMES) expect(ev.view(n), `step ${step} ${n}`).toEqual(ref.view(n));
      expect(ev.revokedHosts, `step ${step}`).toBe(ref.revokedHosts);
      expect(memory(ev), `step ${step}`).toEqual(memory(ref));
    }
    for (const r of partial.members().values()) if (r.cert?.token !== undefined) tokenMembers++;
  }
  if (process.env.EVAL_STATS) console.log(seed, { tokenMembers, ...refused, uses: partial.tokens.uses.size, members: partial.members().size, full: partial.work.fullEvaluations });
  return { partial, tokenMembers, refused };
}

const total = { nameTaken: 0 };

describe('partial evaluation equals full evaluation', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) {
    it(`random changes, seed ${seed}`, () => {
      const { partial } = runRandom(seed, { tokens: false, selfToken: false, preload: false });
      expect(partial.work.partialEvaluations).toBeGreaterThan(250);
    });
  }
  for (const seed of [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36]) {
    const v: Variant = { tokens: true, selfToken: seed % 2 === 0, preload: seed % 4 === 1 };
    it(`random changes with join tokens, seed ${seed} (${v.selfToken ? 'our own certificate from a token' : 'ours from the network key'}${v.preload ? ', a preloaded memory' : ''})`, () => {
      const { partial, tokenMembers, refused } = runRandom(seed, v);
      expect(partial.work.partialEvaluations).toBeGreaterThan(250); // no fallback to full evaluations
      // The run went through the token rules: token hosts as members, and each refusal seen.
      expect(tokenMembers).toBeGreaterThan(10);
      expect(refused.firstPerUse).toBeGreaterThan(0);
      expect(refused.useTaken).toBeGreaterThan(0);
      total.nameTaken += refused.nameTaken;
    });
  }
  it('the token runs saw token certificates refused for taking over a name', () => {
    expect(total.nameTaken).toBeGreaterThan(16);
  });
});

describe('join tokens', () => {
  it('token certificates take the partial path with the token rules (first certificate per use wins)', () => {
    const now = T0 + 2 * 60_000;
    const delegate = fx.ed.generate();
    const grant = signGrant(fx.ed, fx.net.secretKey, {
      network: 'demo',
      names: 'web-*',
      uses: 2,
      ttlMs: 3_600_000,
      certDays: 30,
      delegateKey: Buffer.from(delegate.publicKey).toString('base64'),
      now: new Date(T0),
    });
    const tokenCert = (name: string, use: number, ip: string, at: number) =>
      issueCert(fx.ed, delegate.secretKey, { network: 'demo', name, publicKey: key(name.at(-1)!), overlayIp: ip, now: new Date(at), token: { grant, use } });
    const ev = new MemberEvaluator({
      self: 'me',
      cidr: parsePrefix('100.64.0.0/24')!,
      cidrText: '100.64.0.0/24',
      network: 'demo',
      log,
      revocations: new Revocations('demo', log),
      selfCert: fx.certFor('me'),
      onTimer: () => undefined,
    });
    ev.trust = fx.anchor;
    const hosts = new Map<string, HostEntry>();
    const alive = new Set<string>();
    const m: Mirror = { hosts, alive, leases: new Map(), etcdRead: true };
    const put = (c: HostCert) => {
      hosts.set(c.name, hostEntry(hostRecord(c.name, c, { publicKey: c.publicKey, overlayIp: c.overlayIp })));
      alive.add(c.name);
    };
    put(fx.certFor('a'));
    ev.evaluate(m, now, null);
    put(fx.certFor('b'));
    ev.evaluate(m, now, ['b']);
    expect(ev.work).toMatchObject({ fullEvaluations: 1, partialEvaluations: 1 });
    put(tokenCert('web-1', 1, '100.64.0.11', T0 + 60_000));
    expect([...ev.evaluate(m, now, ['web-1']).added.keys()]).toEqual(['web-1']);
    // A second certificate for use 1 (another name, key and address): refused, web-1 keeps it.
    put(tokenCert('web-2', 1, '100.64.0.40', T0 + 90_000));
    const d = ev.evaluate(m, now, ['web-2']);
    expect(d.added.size + d.changed.size + d.removed.size).toBe(0);
    expect([...ev.members().keys()].sort()).toEqual(['a', 'b', 'web-1']);
    // Two certificates for use 2 in one batch: the earlier one wins, the other is refused.
    put(tokenCert('web-4', 2, '100.64.0.44', T0 + 95_000));
    const earlier = tokenCert('web-3', 2, '100.64.0.43', T0 + 91_000);
    put(earlier);
    expect([...ev.evaluate(m, now, ['web-4', 'web-3']).added.keys()]).toEqual(['web-3']);
    expect(ev.tokens.uses.get(`${grant.id}/2`)).toBe(earlier.serial); // bound to the winner
    put(fx.certFor('c'));
    ev.evaluate(m, now, ['c']);
    expect(ev.work).toMatchObject({ fullEvaluations: 1, partialEvaluations: 5 }); // only the first was a full one
    expect(ev.work.recordsChecked).toBe(1 + 6); // a, then one per name told
  });
});
