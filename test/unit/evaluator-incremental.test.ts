import { beforeAll, describe, expect, it } from 'vitest';
import { issueCert, signGrant } from '../../src/control/cert';
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

describe('partial evaluation equals full evaluation', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) {
    it(`random changes, seed ${seed}`, () => {
      const rand = rng(seed);
      const pick = <T>(a: readonly T[]): T => a[Math.floor(rand() * a.length)]!;
      const now = T0 + DAY;
      const selfCert = issueCert(fx.ed, fx.net.secretKey, { network: 'demo', name: 'me', publicKey: key('m'), overlayIp: IPS[0]!, now: new Date(T0) });
      const make = () => {
        const ev = new MemberEvaluator({
          self: 'me',
          cidr: parsePrefix('100.64.0.0/24')!,
          cidrText: '100.64.0.0/24',
          network: 'demo',
          log,
          revocations: new Revocations('demo', log),
          selfCert,
          heardAt: (n) => (n.charCodeAt(0) % 2 === 0 ? now - 1000 : 0),
          onTimer: () => undefined,
        });
        ev.trust = fx.anchor;
        return ev;
      };
      const partial = make();
      const full = make();
      const hosts = new Map<string, HostEntry>();
      const alive = new Set<string>();
      const m: Mirror = { hosts, alive, leases: new Map(), etcdRead: true };
      const certs = new Map<string, HostCert>();
      const epochs = new Map<string, number>();
      let rev = 10;
      partial.evaluate(m, now, null);
      full.evaluate(m, now, null);
      const shape = (ev: MemberEvaluator) => [...ev.members()].map(([n, r]) => `${n}:${serializeHostRecord(r)}`).sort();
      for (let step = 0; step < 300; step++) {
        const name = pick(NAMES);
        const op = rand();
        const touched = [name];
        if (op < 0.45) {
          // a record: sometimes a new certificate (another address, issued earlier or later)
          let cert = certs.get(name);
          if (!cert || rand() < 0.3) {
            cert = issueCert(fx.ed, fx.net.secretKey, {
              network: 'demo',
              name,
              publicKey: key(name),
              overlayIp: pick(IPS),
              now: new Date(T0 - Math.floor(rand() * 10) * 3_600_000),
            });
            certs.set(name, cert);
          }
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
        } else if (op < 0.55) {
          hosts.set(name, { modRevision: String(rev++), parsed: { ok: false, error: 'not JSON' } });
        } else if (op < 0.65) {
          hosts.delete(name);
        } else if (op < 0.85) {
          if (alive.has(name)) alive.delete(name);
          else alive.add(name);
        } else {
          const a = partial.bye(name);
          expect(full.bye(name)).toBe(a);
          touched.length = 0; // the bye is the evaluator's own news
        }
        partial.evaluate(m, now, touched);
        full.evaluate(m, now, null);
        expect(shape(partial), `step ${step}`).toEqual(shape(full));
        expect(partial.addressConflicts(), `step ${step}`).toEqual(full.addressConflicts());
        for (const n of NAMES) expect(partial.view(n), `step ${step} ${n}`).toEqual(full.view(n));
        expect(partial.revokedHosts).toBe(full.revokedHosts);
      }
      expect(partial.work.partialEvaluations).toBeGreaterThan(100);
    });
  }
});

describe('join tokens', () => {
  it('once a token certificate appears, evaluations are full ones with the token rules (first certificate per use wins)', () => {
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
    expect(ev.work.fullEvaluations).toBe(2);
    // A second certificate for use 1 (another name, key and address): refused, web-1 keeps it.
    put(tokenCert('web-2', 1, '100.64.0.40', T0 + 90_000));
    const d = ev.evaluate(m, now, ['web-2']);
    expect(d.added.size + d.changed.size + d.removed.size).toBe(0);
    expect([...ev.members().keys()].sort()).toEqual(['a', 'b', 'web-1']);
    expect(ev.work.fullEvaluations).toBe(3); // token mode is sticky: full from now on
    put(fx.certFor('c'));
    ev.evaluate(m, now, ['c']);
    expect(ev.work.fullEvaluations).toBe(4);
  });
});
