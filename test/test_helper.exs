ExUnit.start(exclude: [:cluster])
