// attnkit: where attention's cost comes from, measured on this machine.
#include <cstdio>

#include "attnkit/error.h"
#include "core/measure.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  // BLAS baselines and ceilings use the fastest kernel the CPU runs (see measure.h).
  attnkit::measure::ensure_fastest_blas(argc, argv);
  attnkit::measure::configure_allocator();
  CLI::App app{"attnkit: attention at scale, measured on this machine"};
  app.require_subcommand(1);
  attnkit::tools::register_bench(app);
  attnkit::tools::register_generate(app);
  attnkit::tools::register_serve_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const attnkit::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  return 0;
}
