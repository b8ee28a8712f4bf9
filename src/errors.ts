/**
 * Errors with stable codes. Callers match on `code`, never on message text.
 * `transient` says whether retrying the same operation later may succeed.
 */
export type ErrorCode =
  | 'ECONFIG' // a configuration field is missing or malformed (names the field)
  | 'ECIDR' // a CIDR is malformed or outside the allowed ranges
  | 'ENETEXISTS' // a network with that name already exists
  | 'ENONET' // no such network
  | 'EEXHAUSTED' // no free overlay address left in the network's range
  | 'EADDRHELD' // an overlay address is held by another host's valid certificate
  | 'ERECORD' // an etcd record failed validation
  | 'EETCD' // etcd could not be reached or refused the request
  | 'EOS' // a system call failed
  | 'EKEY' // key material missing, malformed or with unsafe permissions
  | 'EINSECURE' // a secret would travel in the clear (etcd password over plain http://)
  | 'ESTATUS' // the status socket could not be reached
  | 'ENOPEER' // no peer by that name or overlay address (cladnet ping)
  | 'ECERTFILE' // a file is neither a well-formed host certificate nor a join token (cladnet cert print)
  | 'ETOKEN' // a join token is malformed, for another network, or does not verify
  | 'ETOKENEXPIRED' // a join token's enrolment period is over
  | 'ETOKENUSEDUP' // every use of a join token is taken
  | 'ETOKENSCOPE' // the host name is outside a join token's name pattern (or already certified)
  | 'ETOKENREVOKED' // the operator revoked the join token
  | 'ESTATE' // local state (state dir) unusable
  | 'EABORTED' // an operation given up on purpose (a publish overtaken by an address change)
  | 'EROUTE' // a route to advertise is not covered by the host's certificate
  | 'EPOLICY'; // a network policy (file or etcd value) is malformed, or not newer than the one in etcd

export class CladnetError extends Error {
  readonly code: ErrorCode;
  readonly transient: boolean;
  readonly field?: string;

  constructor(code: ErrorCode, message: string, opts: { transient?: boolean; field?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CladnetError';
    this.code = code;
    this.transient = opts.transient ?? false;
    if (opts.field !== undefined) this.field = opts.field;
  }
}

export function isCladnetError(e: unknown, code?: ErrorCode): e is CladnetError {
  return e instanceof CladnetError && (code === undefined || e.code === code);
}
