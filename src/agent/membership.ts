/**
 * This host's membership credential, checked before the agent touches anything:
 *
 * 1. the certificate file (`cert`, default <stateDir>/host.cert, from `cladnet host issue`) holds
 *    a certificate and the network's trust anchor, which the agent pins;
 * 2. the certificate is for this network, this host name and this host's own X25519 key, is
 *    signed by that anchor and is valid now;
 * 3. once the network spec is known (from etcd or the saved state), its trust anchor must be the
 *    pinned one and its signature (over cidr, mtu, port) must verify against it: an etcd writer
 *    who swaps the anchor or re-addresses the network gets a refusal. It must not be older than
 *    the spec this host holds: the saved state's, or on a host that never ran, the one the issuer
 *    put in the certificate file. When the spec in etcd fails and a held one passes, the agent
 *    keeps the held one (`chooseNetworkSpec`).
 *
 * Every refusal is a CladnetError (ECONFIG for a certificate meant for another network or name,
 * EKEY for anything about keys and signatures) whose message says what to do.
 */
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { TrustAnchor } from '../control/cert';
import { readCertFile } from '../control/credentials';
import type { HostCert, NetworkSpec } from '../control/records';
import { checkOverlayIpInNetwork } from '../control/records';
import { parseOverlayCidr } from '../util/ipv4';

/** A certificate this close to expiry is logged as a warning at start. */
export const RENEW_WARNING_MS = 30 * 86_400_000;

export interface Membership {
  readonly cert: HostCert;
  readonly anchor: TrustAnchor;
  readonly file: string;
  /** The network spec the certificate file carries (as its issuer verified it), not yet checked here. */
  readonly spec: NetworkSpec | null;
}

export async function loadMembership(
  opts: { cert: string; network: string; name: string },
  publicKey: string,
  log: Logger,
  now: number = Date.now(),
): Promise<Membership> {
  const file = opts.cert;
  const issueHint = `cladnet host issue ${opts.name} --network ${opts.network} --network-key NET.netkey --public-key ${publicKey} --out ${file}`;
  let cf;
  try {
    cf = readCertFile(file);
  } catch (e) {
    if (e instanceof CladnetError) throw new CladnetError(e.code, `${e.message}\n  this host's public key is ${publicKey}; the operator runs: ${issueHint}`, { field: 'cert' });
    throw e;
  }
  const cert = cf.cert;
  if (cert.network !== opts.network) {
    throw new CladnetError('ECONFIG', `cert: ${file} is for network ${cert.network}, not ${opts.network}`, { field: 'cert' });
  }
  if (cert.name !== opts.name) {
    throw new CladnetError('ECONFIG', `cert: ${file} is for host ${JSON.stringify(cert.name)}, but this agent's name is ${JSON.stringify(opts.name)}`, {
      field: 'cert',
    });
  }
  if (cert.publicKey !== publicKey) {
    throw new CladnetError(
      'EKEY',
      `cert: ${file} certifies public key ${cert.publicKey}, but this host's key (private.key in the state dir) is ${publicKey}; issue a new certificate: ${issueHint}`,
      { field: 'cert' },
    );
  }
  const anchor = new TrustAnchor(await loadEd25519(), opts.network, cf.trustAnchor);
  const bad = anchor.verifyCert(cert, now);
  if (bad !== null) throw new CladnetError('EKEY', `cert: ${file}: ${bad}`, { field: 'cert' });
  const left = Date.parse(cert.notAfter) - now;
  if (left < RENEW_WARNING_MS) log.warn({ notAfter: cert.notAfter, file }, 'host certificate expires soon; issue a new one');
  return { cert, anchor, file, spec: cf.spec ?? null };
}

/**
 * Throws unless `spec` carries the pinned trust anchor, is signed by it, and the certificate's
 * address fits its CIDR.
 */
export function checkNetworkMembership(spec: NetworkSpec, m: Membership): void {
  if (spec.trustAnchor === undefined) {
    throw new CladnetError('EKEY', `network ${spec.name} has no trust anchor (made before certificates or rewritten in etcd); refusing to join`, {
      field: 'trustAnchor',
    });
  }
  if (spec.trustAnchor !== m.anchor.publicKey) {
    throw new CladnetError(
      'EKEY',
      `network ${spec.name}: its trust anchor in etcd (${spec.trustAnchor}) is not the one in ${m.file} (${m.anchor.publicKey}); refusing to join`,
      { field: 'trustAnchor' },
    );
  }
  const unsigned = m.anchor.verifySpec(spec);
  if (unsigned !== null) {
    throw new CladnetError(
      'EKEY',
      `network ${spec.name}: the spec does not verify against the trust anchor in ${m.file}: ${unsigned}; refusing to join. ` +
        `If the network was made before specs were signed, the operator checks its cidr, mtu and port and runs: ` +
        `cladnet network sign ${spec.name} --network-key NET.netkey --cidr ${spec.cidr} --mtu ${spec.mtu} --port ${spec.port}`,
      { field: 'signature' },
    );
  }
  const why = checkOverlayIpInNetwork(m.cert, parseOverlayCidr(spec.cidr), spec.cidr);
  if (why !== null) throw new CladnetError('EKEY', `cert: ${m.file}: ${why}`, { field: 'cert' });
}

/**
 * The spec to run with: `current` (from etcd) when it passes `checkNetworkMembership` and is not
 * older than the spec this host holds (`heldSpec`); else the held one when that passes (an etcd
 * writer's rewrite, or its replay of a spec the network key signed earlier, then changes nothing
 * here, and is logged as an error); else the refusal for `current`.
 */
export function chooseNetworkSpec(current: NetworkSpec, saved: NetworkSpec | null, m: Membership, log: Logger): NetworkSpec {
  const held = heldSpec(current, saved, m);
  let refusal: CladnetError;
  try {
    checkNetworkMembership(current, m);
    const older = held === null ? null : olderThan(current, held.spec, held.whose);
    if (older === null) return current;
    refusal = new CladnetError('EKEY', `network ${current.name}: ${older}; refusing it (replayed by an etcd writer?)`, { field: 'serial' });
  } catch (e) {
    if (!(e instanceof CladnetError)) throw e;
    refusal = e;
  }
  if (held === null) throw refusal;
  log.error(
    { err: refusal.message, cidr: held.spec.cidr, mtu: held.spec.mtu, port: held.spec.port, serial: held.spec.serial ?? 0 },
    `the network spec in etcd is refused; keeping the last good spec from ${held.from}`,
  );
  return held.spec;
}

/** A spec this host holds, where it comes from, and how `olderThan` names it. */
export interface HeldSpec {
  spec: NetworkSpec;
  from: 'the saved state' | 'the certificate file';
  whose: string;
}

/**
 * The newest spec this host already holds that passes `checkNetworkMembership`: the saved state's
 * (the one it last ran with; left out when it is `current` itself) or the certificate file's (what
 * the issuer verified when it certified this host: all a host that never ran has). On a tie the
 * saved state's: it is the one the host ran with.
 */
export function heldSpec(current: NetworkSpec, saved: NetworkSpec | null, m: Membership): HeldSpec | null {
  const fromState: HeldSpec | null =
    saved !== null && saved !== current && passes(saved, m) ? { spec: saved, from: 'the saved state', whose: 'this host already ran with' } : null;
  const fromCert: HeldSpec | null =
    m.spec !== null && passes(m.spec, m) ? { spec: m.spec, from: 'the certificate file', whose: `in this host's certificate file (${m.file})` } : null;
  if (fromState === null || fromCert === null) return fromState ?? fromCert;
  return (fromCert.spec.serial ?? 0) > (fromState.spec.serial ?? 0) ? fromCert : fromState;
}

function passes(spec: NetworkSpec, m: Membership): boolean {
  try {
    checkNetworkMembership(spec, m);
    return true;
  } catch {
    return false;
  }
}

/**
 * Why `spec` must not replace `held` (both signed by the network key), or null. Every signing
 * gives a larger serial, so a smaller one is an earlier spec put back; the same serial with other
 * content was never a successor of the held spec either.
 */
export function olderThan(spec: NetworkSpec, held: NetworkSpec, whose = 'this host already ran with'): string | null {
  const a = spec.serial ?? 0;
  const b = held.serial ?? 0;
  if (a < b) return `the spec in etcd has serial ${a}, older than serial ${b} ${whose}`;
  if (a === b && spec.signature !== held.signature) return `the spec in etcd has serial ${a} like the one ${whose}, but other content`;
  return null;
}
