// attnkit: where attention's cost comes from, measured on this machine.
#include <cstdio>
#include <exception>

#include "attnkit/error.h"
#include "core/measure.h"
#include "tools/commands.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  // BLAS baselines and ceilings use the fastest kernel the CPU runs (see measure.h).
  attnkit::measure::ensure_fastest_blas(argc, argv);
  attnkit::measure::configure_allocator();
  CLI::App app{"attnkit: attention at scale, measured on this machine"};
  app.require_subcommand(1);
  attnkit::tools::register_cost(app);
  attnkit::tools::register_bench(app);
  attnkit::tools::register_profile(app);
  attnkit::tools::register_advise(app);
  attnkit::tools::register_report(app);
  attnkit::tools::register_generate(app);
  attnkit::tools::register_serve_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, as every other error (CLI11's own exit() adds a second).
    std::fprintf(stderr, "attnkit: %s\n", e.what());
    return e.get_exit_code();
  } catch (const attnkit::Error& e) {
    attnkit::tools::Progress::interrupt();
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    attnkit::tools::Progress::interrupt();
    std::fprintf(stderr, "attnkit: out of memory\n");
    return 3;
  } catch (const std::exception& e) {
    attnkit::tools::Progress::interrupt();
    std::fprintf(stderr, "attnkit: %s\n", e.what());
    return 3;
  }
  return 0;
}
