/** An error the user can fix: printed without a stack trace, with its own exit code. */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'UserError';
  }
}

/** A recipe (or --set override) that does not validate: exit code 2, nothing built. */
export class RecipeError extends UserError {
  constructor(
    readonly file: string,
    readonly problems: { path: string; message: string }[],
  ) {
    super(
      `invalid recipe ${file}:\n` + problems.map((p) => `  - ${p.path || '(top level)'}: ${p.message}`).join('\n'),
      2,
    );
    this.name = 'RecipeError';
  }
}
