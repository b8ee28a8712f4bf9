import { beforeAll, describe, expect, it } from 'vitest';
import { allowedByGateway, planSubnets, uncovered, type GatewayInput } from '../../src/agent/subnets';
import { canonicalCert, CERT_LABEL, issueCert, TrustAnchor } from '../../src/control/cert';
import { parseHostCert, parseHostRecord, serializeHostCert, serializeHostRecord } from '../../src/control/records';
import { loadAgentConfig } from '../../src/config/config';
import { isCladnetError } from '../../src/errors';
import type { Ed25519, SigningKeyPair } from '../../src/crypto/sign';
import { planGateway, GatewayManager } from '../../src/os/routes/gateway';
import { RecordingRunner } from '../../src/os/runner';
import { currentPins, PinManager, planPinCommands, planPins, underlayRoute, type MainRoute } from '../../src/os/routes/pins';
import { parseIpv4, parsePrefix } from '../../src/util/ipv4';
import { hostRecord, T0, trustFixture, X } from '../helpers/trust';

const OVERLAY = parsePrefix('100.64.0.0/24')!;

let ed: Ed25519;
let net: SigningKeyPair;
let anchor: TrustAnchor;
beforeAll(async () => {
  ({ ed, net, anchor } = await trustFixture());
});

const gw = (name: string, advertised: string[], certified = advertised, health: GatewayInput['health'] = 'up'): GatewayInput => ({
  name,
  advertised,
  certified,
  health,
});

describe('certified routes', () => {
  it('a certificate without routes keeps the canonical bytes it had before routes existed', () => {
    const c = issueCert(ed, net.secretKey, { network: 'demo', name: 'a', publicKey: X(1), overlayIp: '100.64.0.5', now: new Date(T0), serial: 'ab'.repeat(16) });
    expect(c.routes).toBeUndefined();
    const { version, network, name, publicKey, overlayIp, issued, notAfter, serial } = c;
    const old = CERT_LABEL + JSON.stringify({ version, network, name, publicKey, overlayIp, issued, notAfter, serial });
    expect(Buffer.from(canonicalCert(c)).toString()).toBe(old);
    expect(serializeHostCert(c)).not.toContain('routes');
  });

  it('routes are stored sorted and deduplicated, signed, and survive a record round trip', () => {
    const c = issueCert(ed, net.secretKey, {
      network: 'demo', name: 'gw', publicKey: X(2), overlayIp: '100.64.0.6', now: new Date(T0),
      routes: ['198.19.2.0/24', '198.19.1.0/24', '198.19.2.0/24'],
    });
    expect(c.routes).toEqual(['198.19.1.0/24', '198.19.2.0/24']);
    expect(anchor.verifyCert(c, T0)).toBeNull();
    const rec = hostRecord('gw', c, { overlayIp: '100.64.0.6', publicKey: X(2), routes: ['198.19.1.0/24'] });
    const back = parseHostRecord(serializeHostRecord(rec));
    expect(back.ok && back.value.routes).toEqual(['198.19.1.0/24']);
    expect(back.ok && anchor.checkRecord(back.value, T0)).toBeNull();
  });

  it('an etcd writer that adds a route to a certificate breaks its signature', () => {
    const c = issueCert(ed, net.secretKey, { network: 'demo', name: 'gw', publicKey: X(2), overlayIp: '100.64.0.6', now: new Date(T0), routes: ['198.19.1.0/24'] });
    const forged = parseHostCert({ ...JSON.parse(serializeHostCert(c)), routes: ['198.19.0.0/16'] });
    expect(forged.ok).toBe(true);
    expect(forged.ok && anchor.verifyCert(forged.value, T0)).toMatch(/^cert\.signature: not signed/);
    const stripped = parseHostCert({ ...JSON.parse(serializeHostCert(c)), routes: undefined });
    expect(stripped.ok && anchor.verifyCert(stripped.value, T0)).toMatch(/^cert\.signature/);
  });

  it('bad routes are refused with ECONFIG naming the field', () => {
    for (const bad of ['198.19.1.1/24', 'x', '198.19.1.0/33']) {
      let err: unknown;
      try {
        issueCert(ed, net.secretKey, { network: 'demo', name: 'gw', publicKey: X(2), overlayIp: '100.64.0.6', routes: [bad] });
      } catch (e) {
        err = e;
      }
      expect(isCladnetError(err, 'ECONFIG') && err.field).toBe('routes');
    }
    const unsorted = parseHostCert({ ...JSON.parse(serializeHostCert(issueCert(ed, net.secretKey, { network: 'demo', name: 'gw', publicKey: X(2), overlayIp: '100.64.0.6', routes: ['198.19.1.0/24', '198.19.2.0/24'] }))), routes: ['198.19.2.0/24', '198.19.1.0/24'] });
    expect(unsorted.ok ? '' : unsorted.error).toBe('routes: not sorted without duplicates');
  });

  it('uncovered names the first advertised prefix the certificate does not cover', () => {
    expect(uncovered(['198.19.1.0/24', '198.19.1.128/25'], ['198.19.0.0/16'])).toBeNull();
    expect(uncovered(['198.19.1.0/24', '198.18.0.0/15'], ['198.19.0.0/16'])).toBe('198.18.0.0/15');
    expect(uncovered(['198.19.1.0/24'], [])).toBe('198.19.1.0/24');
  });

  it('the agent config reads advertiseRoutes from flag, env and file, and names a bad prefix', () => {
    const base = { flags: { network: 'demo' } };
    expect(loadAgentConfig({ ...base, env: { CLADNET_ADVERTISE_ROUTES: '198.19.1.0/24,198.19.2.0/24' } }).advertiseRoutes).toEqual(['198.19.1.0/24', '198.19.2.0/24']);
    expect(loadAgentConfig({ ...base, env: {} }).advertiseRoutes).toEqual([]);
    let err: unknown;
    try {
      loadAgentConfig({ flags: { network: 'demo', advertiseRoutes: '198.19.1.1/24' }, env: {} });
    } catch (e) {
      err = e;
    }
    expect(isCladnetError(err, 'ECONFIG') && err.message).toContain('did you mean 198.19.1.0/24?');
  });
});

describe('planSubnets', () => {
  it('installs each certified prefix toward its gateway', () => {
    const plan = planSubnets([gw('site-a', ['198.19.1.0/24']), gw('site-b', ['198.19.2.0/24'])], { overlay: OVERLAY, own: [] });
    expect(plan.routes).toEqual([
      { prefix: '198.19.1.0/24', gateway: 'site-a', standby: [] },
      { prefix: '198.19.2.0/24', gateway: 'site-b', standby: [] },
    ]);
    expect(allowedByGateway(plan).get('site-a')).toEqual([parsePrefix('198.19.1.0/24')]);
  });

  it('refuses what the certificate does not cover and the overlay range; skips what we serve ourselves', () => {
    const plan = planSubnets(
      [gw('m', ['198.19.1.0/24'], []), gw('n', ['198.19.0.0/16', '100.64.0.0/10'], ['0.0.0.0/0']), gw('o', ['198.19.3.0/24'])],
      { overlay: OVERLAY, own: ['198.19.3.0/24'] },
    );
    expect(plan.routes).toEqual([{ prefix: '198.19.0.0/16', gateway: 'n', standby: [] }]);
    expect(plan.refused).toEqual([
      { gateway: 'm', prefix: '198.19.1.0/24', reason: 'not covered by its certificate' },
      { gateway: 'n', prefix: '100.64.0.0/10', reason: 'overlaps the overlay range 100.64.0.0/24' },
    ]);
  });

  it('one prefix from two gateways is a failover group: lowest name first, up before unknown before down', () => {
    const both = planSubnets([gw('gw-b', ['198.19.5.0/24']), gw('gw-a', ['198.19.5.0/24'])], { overlay: OVERLAY, own: [] });
    expect(both.routes).toEqual([{ prefix: '198.19.5.0/24', gateway: 'gw-a', standby: ['gw-b'] }]);
    const aDown = planSubnets([gw('gw-b', ['198.19.5.0/24']), gw('gw-a', ['198.19.5.0/24'], undefined, 'down')], { overlay: OVERLAY, own: [] });
    expect(aDown.routes).toEqual([{ prefix: '198.19.5.0/24', gateway: 'gw-b', standby: ['gw-a'] }]);
    // a quiet standby without a session yet beats one known to be failing
    const quiet = planSubnets([gw('gw-b', ['198.19.5.0/24'], undefined, 'unknown'), gw('gw-a', ['198.19.5.0/24'], undefined, 'down')], { overlay: OVERLAY, own: [] });
    expect(quiet.routes[0]!.gateway).toBe('gw-b');
    const upFirst = planSubnets([gw('gw-b', ['198.19.5.0/24']), gw('gw-a', ['198.19.5.0/24'], undefined, 'unknown')], { overlay: OVERLAY, own: [] });
    expect(upFirst.routes[0]!.gateway).toBe('gw-b');
    const allDown = planSubnets([gw('gw-b', ['198.19.5.0/24'], undefined, 'down'), gw('gw-a', ['198.19.5.0/24'], undefined, 'down')], { overlay: OVERLAY, own: [] });
    expect(allDown.routes[0]!.gateway).toBe('gw-a');
  });

  it('a prefix on a network this host is on is not installed here (reached directly); a wider one is', () => {
    const plan = planSubnets([gw('lan', ['198.19.4.0/24']), gw('wide', ['198.19.0.0/16'])], {
      overlay: OVERLAY,
      own: [],
      local: [parsePrefix('198.19.4.0/24')!],
    });
    expect(plan.routes.map((r) => `${r.prefix}>${r.gateway}`)).toEqual(['198.19.0.0/16>wide']);
    expect(plan.refused).toEqual([]);
  });

  it('overlapping different prefixes are both installed (the more specific wins by longest match)', () => {
    const plan = planSubnets([gw('wide', ['198.19.0.0/16']), gw('narrow', ['198.19.7.0/24'])], { overlay: OVERLAY, own: [] });
    expect(plan.routes.map((r) => `${r.prefix}>${r.gateway}`)).toEqual(['198.19.0.0/16>wide', '198.19.7.0/24>narrow']);
  });
});

describe('gateway host setup', () => {
  it('forwarding, and source NAT into the advertised prefixes through one nftables table', async () => {
    expect(planGateway({ ifname: 'cladnet0', forward: true, snat: [] })).toEqual([['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']]);
    const r = new RecordingRunner();
    await new GatewayManager(r).set({ ifname: 'cladnet0', forward: true, snat: ['198.19.1.0/24', '198.19.2.0/24'] });
    await new GatewayManager(r).clear('cladnet0');
    expect(r.transcript).toEqual([
      'sysctl -q -w net.ipv4.ip_forward=1',
      'nft add table ip cladnet_cladnet0',
      'nft flush table ip cladnet_cladnet0',
      'nft add chain ip cladnet_cladnet0 postrouting { type nat hook postrouting priority srcnat ; }',
      'nft add rule ip cladnet_cladnet0 postrouting iifname cladnet0 ip daddr 198.19.1.0/24 masquerade',
      'nft add rule ip cladnet_cladnet0 postrouting iifname cladnet0 ip daddr 198.19.2.0/24 masquerade',
      'nft delete table ip cladnet_cladnet0',
    ]);
  });
});

describe('endpoint pinning', () => {
  const ip = (s: string) => parseIpv4(s)!;
  const main: MainRoute[] = [
    { dst: 'default', gateway: '198.18.1.1', dev: 'eth0' },
    { dst: '198.18.1.0/24', dev: 'eth0', protocol: 'kernel' },
    // ours: the overlay's subnet route and a stale pin must not count as the underlay
    { dst: '198.18.0.0/15', dev: 'cladnet0', protocol: '77' },
    { dst: '198.18.9.9', gateway: '198.18.1.254', dev: 'eth0', protocol: '77' },
  ];

  it('finds the route an endpoint takes without ours', () => {
    expect(underlayRoute(ip('198.18.3.2'), main, 'cladnet0')).toEqual(main[0]);
    expect(underlayRoute(ip('198.18.1.7'), main, 'cladnet0')).toEqual(main[1]);
  });

  it('pins only endpoints an installed subnet route covers, through their underlay route', () => {
    const pins = planPins([ip('198.18.3.2'), ip('198.18.1.7'), ip('198.19.5.5')], [parsePrefix('198.18.0.0/16')!], main, 'cladnet0');
    expect(pins).toEqual([
      { dst: '198.18.1.7', dev: 'eth0' },
      { dst: '198.18.3.2', gateway: '198.18.1.1', dev: 'eth0' },
    ]);
  });

  it('applies the difference: new and changed pins first, stale ones deleted, nothing when it matches', async () => {
    const r = new RecordingRunner((argv) => ({ code: 0, stdout: argv[1] === '-j' ? JSON.stringify(main) : '', stderr: '' }));
    const out = await new PinManager(r).set([ip('198.18.3.2')], [parsePrefix('198.18.0.0/15')!], 'cladnet0');
    expect(out.pins).toEqual([{ dst: '198.18.3.2', gateway: '198.18.1.1', dev: 'eth0' }]);
    expect(r.transcript).toEqual([
      'ip -j route show table main',
      'ip route replace 198.18.3.2/32 via 198.18.1.1 dev eth0 proto 77',
      'ip route del 198.18.9.9/32 dev eth0 proto 77',
    ]);
    const pinned = [...main.slice(0, 3), { dst: '198.18.3.2', gateway: '198.18.1.1', dev: 'eth0', protocol: 77 }];
    expect(planPinCommands(currentPins(pinned, 'cladnet0'), planPins([ip('198.18.3.2')], [parsePrefix('198.18.0.0/15')!], pinned, 'cladnet0'))).toEqual([]);
    // the underlay gateway changed (DHCP, a new network): the pin follows, replaced in place
    const moved = [{ dst: 'default', gateway: '198.18.7.1', dev: 'eth1' }, ...pinned.slice(2)];
    expect(planPinCommands(currentPins(moved, 'cladnet0'), planPins([ip('198.18.3.2')], [parsePrefix('198.18.0.0/15')!], moved, 'cladnet0'))).toEqual([
      ['ip', 'route', 'replace', '198.18.3.2/32', 'via', '198.18.7.1', 'dev', 'eth1', 'proto', '77'],
    ]);
  });
});
