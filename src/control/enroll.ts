/**
 * A new host joins with a join token (src/control/token.ts), without the network key:
 *
 * 1. offline checks: the token decodes, is for this network, its grant verifies against the trust
 *    anchor it carries (which the host pins), the host name matches its pattern (ETOKENSCOPE), and
 *    its enrolment period is not over (ETOKENEXPIRED);
 * 2. etcd: the network spec must verify against that anchor (EKEY), and the token must not be
 *    revoked (ETOKENREVOKED);
 * 3. the name must not be certified to another key already (ETOKENSCOPE: a token never takes
 *    over an existing host);
 * 4. the first free use: a use is taken when /token-uses/<id>-<use> holds a certificate that
 *    verifies under the token; none free is ETOKENUSEDUP. A crash after the claim is recovered:
 *    a claim for this name and key is ours;
 * 5. an overlay address (the same allocator and holder checks as `host issue`), then the host's
 *    certificate signed with the delegate key, naming the use;
 * 6. the claim: one transaction, create-if-absent on the use's key (or replacing a value there
 *    that does not verify, at its revision). Losing the race moves on to the next use.
 *
 * The caller stores the certificate in the state dir and wipes the token (secret and file).
 */
import type { Etcd3 } from 'etcd3';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { issueCert, TrustAnchor } from './cert';
import { etcdCall } from './etcd';
import { assertAddressFree, loadIssuerView, reservedFor } from './issuance';
import { matchesNamePattern, tokenUseKey } from './keys';
import { leaseOverlayIp } from './leases';
import { getNetwork } from './networks';
import { checkOverlayIpInNetwork, checkRecordSize, HostCert, type NetworkSpec, serializeHostCert } from './records';
import { decodeToken, readTokenRevocation, readTokenUses, type JoinToken } from './token';
import { parseOverlayCidr } from '../util/ipv4';

export interface EnrollOptions {
  network: string;
  name: string;
  /** This host's X25519 public key (base64): made on this host, never leaves it. */
  publicKey: string;
  /** The token string. */
  token: string;
  log?: Logger;
  now?: () => Date;
}

export interface Enrolled {
  cert: HostCert;
  trustAnchor: string;
  /** The spec the address was leased under: etcd's, or the token's when etcd's is older (both signed). */
  spec: NetworkSpec;
  use: number;
  /** True when an earlier run had already claimed the use (it crashed before storing the certificate). */
  recovered: boolean;
}

/** Offline checks of a decoded token against this host (steps 1). */
export function checkTokenScope(t: JoinToken, o: { network: string; name: string }, nowMs: number): void {
  const g = t.grant;
  if (g.network !== o.network) {
    throw new CladnetError('ETOKEN', `token: made for network ${g.network}, but this agent joins ${o.network}`, { field: 'token' });
  }
  if (!matchesNamePattern(g.names, o.name)) {
    throw new CladnetError(
      'ETOKENSCOPE',
      `token: host name ${JSON.stringify(o.name)} is outside the token's name pattern ${JSON.stringify(g.names)} (token ${g.id}); start the agent with a matching --name or make a token for it`,
      { field: 'name' },
    );
  }
  if (nowMs > Date.parse(g.notAfter)) {
    throw new CladnetError(
      'ETOKENEXPIRED',
      `token: expired at ${g.notAfter} (token ${g.id}, made ${g.issued}); hosts can no longer join with it: make a new one with cladnet token create`,
      { field: 'token' },
    );
  }
}

export async function enrollWithToken(client: Etcd3, o: EnrollOptions): Promise<Enrolled> {
  const ed = await loadEd25519();
  const now = o.now ?? (() => new Date());
  const t = decodeToken(o.token, ed);
  try {
    const g = t.grant;
    checkTokenScope(t, o, now().getTime());
    const anchor = new TrustAnchor(ed, o.network, t.trustAnchor);
    const inEtcd = await getNetwork(client, o.network);
    const badSpec = inEtcd.trustAnchor !== t.trustAnchor ? `trustAnchor: ${inEtcd.trustAnchor ?? 'none'} is not the token's ${t.trustAnchor}` : anchor.verifySpec(inEtcd);
    if (badSpec !== null) {
      throw new CladnetError('EKEY', `network ${o.network}: the spec in etcd does not verify against the token's trust anchor: ${badSpec}; refusing to join`, { field: 'trustAnchor' });
    }
    // The newer of etcd's spec and the token's (both signed): an earlier one put back in etcd is not
    // the one this host's address is leased under, nor the one its certificate file carries.
    const spec = t.spec !== undefined && (t.spec.serial ?? 0) > (inEtcd.serial ?? 0) ? t.spec : inEtcd;
    if (spec !== inEtcd) {
      o.log?.error(
        { etcdSerial: inEtcd.serial ?? 0, tokenSerial: spec.serial ?? 0 },
        "enrolment: the network spec in etcd is older than the token's; using the token's (an earlier spec put back by an etcd writer?)",
      );
    }
    const rev = await readTokenRevocation(client, anchor, g.id);
    if (rev) {
      throw new CladnetError('ETOKENREVOKED', `token: revoked by the operator at ${rev.revoked} (token ${g.id}); hosts can no longer join with it`, { field: 'token' });
    }
    const prefix = parseOverlayCidr(spec.cidr, 'cidr');
    for (let attempt = 0; attempt < g.uses + 8; attempt++) {
      const { byUse, invalid } = await readTokenUses(client, anchor, g.id);
      for (const [use, c] of byUse) {
        if (c.name === o.name && c.publicKey === o.publicKey && checkOverlayIpInNetwork(c, prefix, spec.cidr) === null) {
          return { cert: c, trustAnchor: t.trustAnchor, spec, use, recovered: true };
        }
      }
      let use = 0;
      for (let n = 1; n <= g.uses; n++) {
        if (!byUse.has(n)) {
          use = n;
          break;
        }
      }
      if (use === 0) {
        const names = [...byUse.entries()].sort((a, b) => a[0] - b[0]).map(([n, c]) => `${n}: ${c.name}`);
        throw new CladnetError('ETOKENUSEDUP', `token: all ${g.uses} use(s) are taken (${names.join(', ')}; token ${g.id}); make a new token for more hosts`, {
          field: 'token',
        });
      }
      const nowDate = now();
      const view = await loadIssuerView(client, spec, anchor, null, nowDate.getTime());
      for (const w of view.warnings) o.log?.warn({ warning: w }, 'enrolment: skipped an etcd record');
      for (const certs of view.held.values()) {
        const other = certs.find((c) => c.name === o.name && c.publicKey !== o.publicKey);
        if (other) {
          throw new CladnetError(
            'ETOKENSCOPE',
            `token: host name ${JSON.stringify(o.name)} is already certified to another key (certificate ${other.serial}, ${other.overlayIp}, valid until ${other.notAfter}); a token never takes over an existing host: pick another --name`,
            { field: 'name' },
          );
        }
      }
      const overlayIp = await leaseOverlayIp(client, spec, o.name, o.publicKey, { reserved: reservedFor(view, o.name) });
      assertAddressFree(view, overlayIp, o.name);
      const cert = issueCert(ed, t.secret, { network: o.network, name: o.name, publicKey: o.publicKey, overlayIp, now: nowDate, token: { grant: g, use } });
      const key = tokenUseKey(o.network, g.id, use);
      checkRecordSize('tokenUse', serializeHostCert(cert));
      const bad = invalid.get(use);
      const txn = bad === undefined ? client.if(key, 'Create', '==', 0) : client.if(key, 'Mod', '==', bad);
      const res = await etcdCall(`claim ${key}`, () => txn.then(client.put(key).value(serializeHostCert(cert))).commit());
      if (res.succeeded) return { cert, trustAnchor: t.trustAnchor, spec, use, recovered: false };
      o.log?.info({ tokenId: g.id, use }, 'another host claimed this token use first; trying the next');
    }
    throw new CladnetError('EETCD', `token: could not claim a use of token ${g.id} (too many concurrent claims); try again`, { field: 'token', transient: true });
  } finally {
    t.secret.fill(0);
  }
}
