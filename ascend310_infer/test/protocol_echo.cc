/**
 * Test driver for the harness's file helpers (tests/test_cpp_harness.py): a stand-in runner that reads a
 * preprocess.py folder exactly as src/main.cc does (manifest order, <stem>_<i>.bin) and echoes each input
 * file to <stem>_<i>.bin in the result folder, then writes the result manifest.
 *
 *   protocol_echo --input_dir=BIN_DIR --result_dir=RESULT_DIR --num_inputs=3
 */
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "inc/utils.h"

int main(int argc, char **argv) {
  std::map<std::string, std::string> args;
  std::string error;
  std::vector<std::string> stems;
  if (!deploy::ParseArgs(argc, argv, {"input_dir", "result_dir", "num_inputs"}, &args, &error) ||
      !deploy::ReadManifest(deploy::JoinPath(args["input_dir"], deploy::kManifestName), &stems, &error)) {
    std::cerr << "protocol_echo: error: " << error << std::endl;
    return 1;
  }
  const size_t num_inputs = static_cast<size_t>(std::stoul(args["num_inputs"]));
  std::vector<double> sizes;
  for (const std::string &stem : stems) {
    for (size_t i = 0; i < num_inputs; ++i) {
      std::vector<char> data;
      const std::string name = deploy::TensorFileName(stem, i);
      if (!deploy::ReadBinaryFile(deploy::JoinPath(args["input_dir"], name), &data, &error) ||
          !deploy::WriteBinaryFile(deploy::JoinPath(args["result_dir"], name), data.data(), data.size(), &error)) {
        std::cerr << "protocol_echo: error: " << error << std::endl;
        return 1;
      }
      sizes.push_back(static_cast<double>(data.size()));
    }
  }
  if (!deploy::WriteManifest(deploy::JoinPath(args["result_dir"], deploy::kManifestName), stems, &error)) {
    std::cerr << "protocol_echo: error: " << error << std::endl;
    return 1;
  }
  std::cout << stems.size() << " images; mean file size " << deploy::Mean(sizes) << " bytes" << std::endl;
  return 0;
}
