/** Whether the operator gave Node a V8 flag matching `flag`, on the command line or in NODE_OPTIONS (then the proxy leaves that setting alone). */
export function operatorGaveFlag(flag: RegExp, execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  const given = [...execArgv, ...(nodeOptions ?? '').split(/\s+/)];
  return given.some((arg) => flag.test(arg));
}
