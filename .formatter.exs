[
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,mix}/**/*.{ex,exs}"],
  line_length: 110
]
