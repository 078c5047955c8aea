"""voip-pipeline core: frames, formats, nodes, graphs, runtime, plugins and CLI."""
