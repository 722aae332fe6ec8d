// Whether a bench file is the program being run (`node --import tsx src/bench/NAME.ts`), by the script's file name:
// comparing import.meta.url with argv[1] is also true for every module of a one-file bundle (the GPU runs).
export function isEntry(name: string): boolean {
  return new RegExp(`bench[\\\\/]${name}\\.[cm]?[jt]s$`).test(process.argv[1] ?? '');
}
