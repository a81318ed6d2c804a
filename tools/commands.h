// The attnkit command-line program: one file per subcommand, each registering itself here.
#pragma once

#include <CLI/CLI.hpp>

namespace attnkit::tools {

void register_bench(CLI::App& app);
void register_generate(CLI::App& app);
void register_serve_bench(CLI::App& app);

}  // namespace attnkit::tools
